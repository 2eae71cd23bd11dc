//! The client of `spfs server`: a [`Repository`] over gRPC.
//!
//! The interface is synchronous (transfers run on threads, the VFS on FUSE
//! workers), so the client owns a small tokio runtime and blocks on it;
//! it must not be called from inside another tokio runtime. Every call has
//! a deadline, a payload stream an idle timeout per chunk, and the
//! connection HTTP/2 and TCP keepalives, so a server that stalls or
//! vanishes gives an error, never a hang.

use std::io::Read;
use std::time::Duration;

use spfs_model::Digest;
use spfs_storage::tags::TagVersion;
use spfs_storage::{PayloadReader, Repository, Result, StorageError};
use tokio_stream::StreamExt;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Status};

use super::CHUNK;
use super::proto;
use super::proto::repo_client::RepoClient;
use crate::chunks::{ChannelReader, spawn_reader};

/// How long connecting may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A repository served by `spfs server` at `grpc://HOST:PORT`.
pub struct GrpcRepository {
    address: String,
    runtime: tokio::runtime::Runtime,
    client: RepoClient<Channel>,
    token: Option<String>,
    /// How long a call, or a pause in a payload stream, may last.
    timeout: Duration,
}

impl GrpcRepository {
    /// Connect (and fail at once if nothing answers).
    pub fn connect(
        host: &str,
        port: u16,
        token: Option<String>,
        timeout: Duration,
    ) -> std::io::Result<Self> {
        let address = format!("grpc://{host}:{port}");
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let endpoint = Endpoint::from_shared(format!("http://{host}:{port}"))
            .map_err(std::io::Error::other)?
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(timeout)
            // A peer that vanishes (a partition, not a reset) is noticed.
            .tcp_keepalive(Some(Duration::from_secs(15)))
            .http2_keep_alive_interval(Duration::from_secs(15))
            .keep_alive_timeout(Duration::from_secs(10))
            .keep_alive_while_idle(true);
        let channel = runtime
            .block_on(endpoint.connect())
            .map_err(|e| std::io::Error::other(describe(&e)))?;
        let client = RepoClient::new(channel)
            .max_decoding_message_size(256 << 20)
            .max_encoding_message_size(256 << 20);
        Ok(GrpcRepository {
            address,
            runtime,
            client,
            token,
            timeout,
        })
    }

    fn request<T>(&self, msg: T) -> Request<T> {
        let mut req = Request::new(msg);
        if let Some(token) = &self.token
            && let Ok(v) = format!("Bearer {token}").parse()
        {
            req.metadata_mut().insert("authorization", v);
        }
        req
    }

    /// A failed call as a storage error.
    fn error(&self, s: Status, not_found: impl FnOnce() -> StorageError) -> StorageError {
        match s.code() {
            Code::NotFound => not_found(),
            _ => StorageError::Remote {
                address: self.address.clone(),
                message: s.message().to_string(),
            },
        }
    }

    fn parse(&self, text: &str) -> Result<Digest> {
        Digest::parse(text).map_err(|e| StorageError::Remote {
            address: self.address.clone(),
            message: format!("bad digest '{text}' in an answer: {e}"),
        })
    }
}

/// A transport error with its causes on one line.
fn describe(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        out.push_str(": ");
        out.push_str(&c.to_string());
        cause = c.source();
    }
    out
}

impl Repository for GrpcRepository {
    fn address(&self) -> String {
        self.address.clone()
    }

    fn has_object(&self, digest: &Digest) -> Result<bool> {
        let mut c = self.client.clone();
        let req = self.request(proto::DigestRequest {
            digest: digest.to_string(),
        });
        self.runtime
            .block_on(c.has_object(req))
            .map(|r| r.into_inner().present)
            .map_err(|s| self.error(s, || StorageError::UnknownObject(*digest)))
    }

    fn read_object_bytes(&self, digest: &Digest) -> Result<Vec<u8>> {
        let mut c = self.client.clone();
        let req = self.request(proto::DigestRequest {
            digest: digest.to_string(),
        });
        let bytes = self
            .runtime
            .block_on(c.read_object(req))
            .map(|r| r.into_inner().data)
            .map_err(|s| self.error(s, || StorageError::UnknownObject(*digest)))?;
        // Checked here too: a server is not trusted with the digest.
        spfs_storage::repository::check_object(digest, &bytes)?;
        Ok(bytes)
    }

    fn write_object_bytes(&self, digest: &Digest, bytes: &[u8]) -> Result<()> {
        let mut c = self.client.clone();
        let req = self.request(proto::ObjectBytes {
            digest: digest.to_string(),
            data: bytes.to_vec(),
        });
        self.runtime
            .block_on(c.write_object(req))
            .map(|_| ())
            .map_err(|s| self.error(s, || StorageError::UnknownObject(*digest)))
    }

    fn has_payload(&self, digest: &Digest) -> Result<bool> {
        let mut c = self.client.clone();
        let req = self.request(proto::DigestRequest {
            digest: digest.to_string(),
        });
        self.runtime
            .block_on(c.has_payload(req))
            .map(|r| r.into_inner().present)
            .map_err(|s| self.error(s, || StorageError::UnknownObject(*digest)))
    }

    fn open_payload(&self, digest: &Digest) -> Result<PayloadReader> {
        let (reader, size, public) = self.read_range(digest, 0, 0)?;
        Ok(PayloadReader {
            reader: Box::new(reader),
            size: Some(size),
            public,
        })
    }

    fn read_payload_range(
        &self,
        digest: &Digest,
        offset: u64,
        length: u64,
    ) -> Result<(Vec<u8>, bool)> {
        let (r, _, public) = self.read_range(digest, offset, length.max(1))?;
        Ok((
            crate::chunks::read_at_most(&self.address, r, length)?,
            public,
        ))
    }

    fn write_payload(&self, digest: &Digest, reader: &mut dyn Read, public: bool) -> Result<u64> {
        let mut c = self.client.clone();
        let (tx, rx) = tokio::sync::mpsc::channel::<proto::PayloadChunk>(4);
        let req = self.request(tokio_stream::wrappers::ReceiverStream::new(rx));
        let call = self
            .runtime
            .spawn(async move { c.write_payload(req).await });
        let mut first = true;
        let mut buf = vec![0u8; CHUNK];
        let read_error = loop {
            let n = match read_full(reader, &mut buf) {
                Ok(n) => n,
                Err(e) => break Some(e),
            };
            let chunk = proto::PayloadChunk {
                digest: if first {
                    digest.to_string()
                } else {
                    String::new()
                },
                size: 0,
                public,
                data: buf[..n].to_vec(),
            };
            first = false;
            if tx.blocking_send(chunk).is_err() || n < buf.len() {
                break None;
            }
        };
        if let Some(e) = read_error {
            call.abort();
            return Err(StorageError::io("cannot read", "(payload source)")(e));
        }
        drop(tx);
        let res = self
            .runtime
            .block_on(call)
            .map_err(|e| StorageError::Remote {
                address: self.address.clone(),
                message: e.to_string(),
            })?;
        res.map(|r| r.into_inner().size)
            .map_err(|s| self.error(s, || StorageError::UnknownObject(*digest)))
    }

    fn tag_history(&self, name: &str) -> Result<Vec<TagVersion>> {
        let mut c = self.client.clone();
        let req = self.request(proto::TagRequest {
            name: name.to_string(),
        });
        let versions = self
            .runtime
            .block_on(c.tag_history(req))
            .map_err(|s| self.error(s, || StorageError::UnknownTag(name.to_string())))?
            .into_inner()
            .versions;
        versions
            .into_iter()
            .map(|v| {
                Ok(TagVersion {
                    target: self.parse(&v.target)?,
                    time: v.time,
                    user: v.user,
                })
            })
            .collect()
    }

    fn push_tag(&self, name: &str, target: &Digest) -> Result<()> {
        let mut c = self.client.clone();
        let req = self.request(proto::PushTagRequest {
            name: name.to_string(),
            target: target.to_string(),
        });
        self.runtime
            .block_on(c.push_tag(req))
            .map(|_| ())
            .map_err(|s| self.error(s, || StorageError::UnknownObject(*target)))
    }

    fn resolve_ref(&self, text: &str) -> Result<Digest> {
        let mut c = self.client.clone();
        let req = self.request(proto::RefRequest {
            reference: text.to_string(),
        });
        let d = self
            .runtime
            .block_on(c.resolve_ref(req))
            .map_err(|s| self.error(s, || StorageError::UnknownReference(text.to_string())))?
            .into_inner()
            .digest;
        self.parse(&d)
    }
}

impl GrpcRepository {
    /// Read `length` bytes (0: to the end) of a payload from `offset`:
    /// a reader, the payload's whole size, and whether its copy is public.
    pub fn read_range(
        &self,
        digest: &Digest,
        offset: u64,
        length: u64,
    ) -> Result<(StreamReader, u64, bool)> {
        let mut c = self.client.clone();
        let req = self.request(proto::ReadPayloadRequest {
            digest: digest.to_string(),
            offset,
            length,
        });
        let mut stream = self
            .runtime
            .block_on(c.read_payload(req))
            .map_err(|s| self.error(s, || StorageError::UnknownObject(*digest)))?
            .into_inner();
        let first = self
            .runtime
            .block_on(async {
                tokio::time::timeout(self.timeout, stream.next())
                    .await
                    .unwrap_or_else(|_| Some(Err(Status::deadline_exceeded("no data"))))
            })
            .transpose()
            .map_err(|s| self.error(s, || StorageError::UnknownObject(*digest)))?
            .ok_or_else(|| StorageError::Remote {
                address: self.address.clone(),
                message: format!("no data for payload {digest}"),
            })?;
        let (size, public) = (first.size, first.public);
        let chunks = stream.map(|c| c.map(|c| c.data).map_err(|s| s.message().to_string()));
        let reader = spawn_reader(&self.runtime, first.data, chunks, self.timeout);
        Ok((StreamReader(reader), size, public))
    }
}

/// A payload (or a range of one) arriving from the server.
pub struct StreamReader(ChannelReader);

impl Read for StreamReader {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        self.0.read(out)
    }
}

/// Fill `buf` unless the input ends first; the bytes read.
fn read_full(reader: &mut dyn Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match reader.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}
