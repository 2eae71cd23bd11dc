//! `spfs server`: a repository served over gRPC on one TCP port.
//!
//! Every call runs against the server's own [`FsRepository`] on a blocking
//! thread, so the repository's checks apply unchanged: objects and payloads
//! are verified against their digests on receipt and nothing else is
//! stored. `--read-only` refuses every write. With a token, every call must
//! carry `authorization: Bearer <token>` (compared in constant time).
//! Payloads are served from public copies and the server user's own
//! private ones, never from another user's private copy.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::mpsc::SyncSender;

use crate::chunks::ChannelReader;

use spfs_storage::{FsRepository, Repository, StorageError};
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, Streaming};

use super::proto;
use super::proto::repo_server::{Repo, RepoServer};
use super::{CHUNK, parse_digest};

/// How `spfs server` serves.
pub struct ServerOptions {
    pub read_only: bool,
    /// The bearer token every request must carry, if any.
    pub token: Option<String>,
}

struct Service {
    repo: Arc<FsRepository>,
    read_only: bool,
}

/// Serve `repo` on `listener` until `shutdown` completes.
pub async fn serve(
    repo: FsRepository,
    listener: tokio::net::TcpListener,
    options: ServerOptions,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    let service = Service {
        repo: Arc::new(repo),
        read_only: options.read_only,
    };
    let token = options.token.map(Arc::new);
    let check = move |req: Request<()>| -> Result<Request<()>, Status> {
        let Some(token) = &token else {
            return Ok(req);
        };
        let given = req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        if constant_time_eq(given.as_bytes(), token.as_bytes()) {
            Ok(req)
        } else {
            Err(Status::unauthenticated("a valid bearer token is required"))
        }
    };
    tonic::transport::Server::builder()
        .add_service(tonic::service::interceptor::InterceptedService::new(
            RepoServer::new(service)
                .max_decoding_message_size(MAX_MESSAGE)
                .max_encoding_message_size(MAX_MESSAGE),
            check,
        ))
        .serve_with_incoming_shutdown(
            // Small writes (a stream's trailers, window updates) go out at
            // once: with Nagle on they wait ~40 ms for the client's ACK.
            tokio_stream::wrappers::TcpListenerStream::new(listener).map(|conn| {
                conn.inspect(|s| {
                    let _ = s.set_nodelay(true);
                })
            }),
            shutdown,
        )
        .await
}

/// How long the server waits for the next chunk of an upload.
const CLIENT_IDLE: std::time::Duration = std::time::Duration::from_secs(120);

/// The largest message: an object (manifests can be large) or a chunk.
const MAX_MESSAGE: usize = 256 << 20;

/// The address a listener serves, for messages.
pub fn local_addr(listener: &tokio::net::TcpListener) -> Option<SocketAddr> {
    listener.local_addr().ok()
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A storage error as a status the client maps back.
pub(super) fn status(e: StorageError) -> Status {
    let message = e.to_string();
    match e {
        StorageError::UnknownObject(_)
        | StorageError::UnknownTag(_)
        | StorageError::UnknownReference(_)
        | StorageError::UnknownTagVersion { .. } => Status::not_found(message),
        StorageError::Corrupt { .. } => Status::data_loss(message),
        StorageError::PayloadNotReadable(_) | StorageError::TagNotYours { .. } => {
            Status::permission_denied(message)
        }
        StorageError::Spec(_)
        | StorageError::AmbiguousDigest { .. }
        | StorageError::AmbiguousReference(_) => Status::invalid_argument(message),
        _ => Status::internal(message),
    }
}

impl Service {
    fn writable(&self) -> Result<(), Status> {
        if self.read_only {
            return Err(Status::permission_denied("this server is read-only"));
        }
        Ok(())
    }

    /// Run `f` on the repository on a blocking thread.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&FsRepository) -> Result<T, StorageError> + Send + 'static,
    ) -> Result<T, Status> {
        let repo = self.repo.clone();
        tokio::task::spawn_blocking(move || f(&repo))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(status)
    }
}

type ChunkStream =
    std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<proto::PayloadChunk, Status>> + Send>>;

#[tonic::async_trait]
impl Repo for Service {
    async fn has_object(
        &self,
        req: Request<proto::DigestRequest>,
    ) -> Result<Response<proto::HasResponse>, Status> {
        let d = parse_digest(&req.get_ref().digest)?;
        let present = self
            .blocking(move |r| Repository::has_object(r, &d))
            .await?;
        Ok(Response::new(proto::HasResponse { present }))
    }

    async fn read_object(
        &self,
        req: Request<proto::DigestRequest>,
    ) -> Result<Response<proto::ObjectBytes>, Status> {
        let d = parse_digest(&req.get_ref().digest)?;
        let data = self.blocking(move |r| r.read_object_bytes(&d)).await?;
        Ok(Response::new(proto::ObjectBytes {
            digest: d.to_string(),
            data,
        }))
    }

    async fn write_object(
        &self,
        req: Request<proto::ObjectBytes>,
    ) -> Result<Response<proto::Empty>, Status> {
        self.writable()?;
        let msg = req.into_inner();
        let d = parse_digest(&msg.digest)?;
        self.blocking(move |r| r.write_object_bytes(&d, &msg.data))
            .await?;
        Ok(Response::new(proto::Empty {}))
    }

    async fn has_payload(
        &self,
        req: Request<proto::DigestRequest>,
    ) -> Result<Response<proto::HasResponse>, Status> {
        let d = parse_digest(&req.get_ref().digest)?;
        let present = self
            .blocking(move |r| Repository::has_payload(r, &d))
            .await?;
        Ok(Response::new(proto::HasResponse { present }))
    }

    type ReadPayloadStream = ChunkStream;

    async fn read_payload(
        &self,
        req: Request<proto::ReadPayloadRequest>,
    ) -> Result<Response<Self::ReadPayloadStream>, Status> {
        let msg = req.into_inner();
        let d = parse_digest(&msg.digest)?;
        let (offset, length) = (msg.offset, msg.length);
        let reader = served_reader();
        let opened = self
            .blocking(move |r| r.open_payload_as(&d, reader))
            .await?;
        let size = opened.file.metadata().map(|m| m.len()).unwrap_or(0);
        let public = opened.copy == spfs_storage::PayloadCopy::Public;
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::task::spawn_blocking(move || {
            let file = opened.file;
            let end = match length {
                0 => size,
                n => offset.saturating_add(n).min(size),
            };
            let mut pos = offset.min(size);
            let mut first = true;
            loop {
                let want = (end - pos).min(CHUNK as u64) as usize;
                let mut data = vec![0u8; want];
                let got = match std::os::unix::fs::FileExt::read_at(&file, &mut data, pos) {
                    Ok(n) => n,
                    Err(e) => {
                        let _ = tx.blocking_send(Err(Status::internal(e.to_string())));
                        return;
                    }
                };
                data.truncate(got);
                pos += got as u64;
                let chunk = proto::PayloadChunk {
                    digest: if first { d.to_string() } else { String::new() },
                    size: if first { size } else { 0 },
                    public,
                    data,
                };
                first = false;
                if tx.blocking_send(Ok(chunk)).is_err() || got == 0 || pos >= end {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn write_payload(
        &self,
        req: Request<Streaming<proto::PayloadChunk>>,
    ) -> Result<Response<proto::WritePayloadResponse>, Status> {
        self.writable()?;
        let mut stream = req.into_inner();
        let first = stream
            .next()
            .await
            .ok_or_else(|| Status::invalid_argument("no payload sent"))??;
        let d = parse_digest(&first.digest)?;
        let public = first.public;
        let (tx, rx) = std::sync::mpsc::sync_channel::<Result<Vec<u8>, String>>(4);
        let repo = self.repo.clone();
        let writer = tokio::task::spawn_blocking(move || {
            let mut reader = ChannelReader::new(rx, CLIENT_IDLE);
            repo.write_payload(&d, &mut reader, public)
        });
        let feed = async {
            send_blocking(&tx, Ok(first.data)).await;
            while let Some(chunk) = stream.next().await {
                match chunk {
                    Ok(c) => {
                        if !send_blocking(&tx, Ok(c.data)).await {
                            break;
                        }
                    }
                    Err(e) => {
                        send_blocking(&tx, Err(e.message().to_string())).await;
                        break;
                    }
                }
            }
            drop(tx);
        };
        feed.await;
        let size = writer
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(status)?;
        Ok(Response::new(proto::WritePayloadResponse { size }))
    }

    async fn tag_history(
        &self,
        req: Request<proto::TagRequest>,
    ) -> Result<Response<proto::TagHistoryResponse>, Status> {
        let name = req.into_inner().name;
        let history = self.blocking(move |r| r.tag_history(&name)).await?;
        Ok(Response::new(proto::TagHistoryResponse {
            versions: history
                .into_iter()
                .map(|v| proto::TagVersion {
                    target: v.target.to_string(),
                    time: v.time,
                    user: v.user,
                })
                .collect(),
        }))
    }

    async fn push_tag(
        &self,
        req: Request<proto::PushTagRequest>,
    ) -> Result<Response<proto::Empty>, Status> {
        self.writable()?;
        let msg = req.into_inner();
        let target = parse_digest(&msg.target)?;
        self.blocking(move |r| {
            // Only what the repository holds may be tagged.
            if !Repository::has_object(r, &target)? {
                return Err(StorageError::UnknownObject(target));
            }
            r.push_tag(&msg.name, &target)
        })
        .await?;
        Ok(Response::new(proto::Empty {}))
    }

    async fn resolve_ref(
        &self,
        req: Request<proto::RefRequest>,
    ) -> Result<Response<proto::DigestResponse>, Status> {
        let text = req.into_inner().reference;
        let d = self.blocking(move |r| r.resolve_ref(&text)).await?;
        Ok(Response::new(proto::DigestResponse {
            digest: d.to_string(),
        }))
    }
}

/// Whose copies of payloads the server hands out: its own user's and the
/// public ones; never another user's private copy, even when it runs as
/// root (its clients are known by a token, not as users of this host).
fn served_reader() -> u32 {
    match rustix::process::geteuid().as_raw() {
        0 => u32::MAX,
        uid => uid,
    }
}

/// Hand a chunk to the blocking writer without blocking the runtime;
/// false once the writer stopped reading.
async fn send_blocking(
    tx: &SyncSender<Result<Vec<u8>, String>>,
    item: Result<Vec<u8>, String>,
) -> bool {
    let tx = tx.clone();
    tokio::task::spawn_blocking(move || tx.send(item).is_ok())
        .await
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    #[test]
    fn tokens_compare_whole() {
        assert!(super::constant_time_eq(b"secret", b"secret"));
        assert!(!super::constant_time_eq(b"secret", b"secreT"));
        assert!(!super::constant_time_eq(b"secret", b"secret2"));
        assert!(!super::constant_time_eq(b"", b"x"));
    }
}
