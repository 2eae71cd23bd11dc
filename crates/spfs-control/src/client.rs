//! The client side: [`Client`] connects to the service over its Unix socket
//! or loopback TCP (sending the bearer token when given) and calls the RPCs.

use std::error::Error as _;
use std::future::Future;
use std::io;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tokio::io::AsyncReadExt;
use tokio::net::UnixStream;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint, Uri};
use tonic::{Request, Status};

use crate::auth::AUTHORIZATION;
use crate::proto::vfs_client::VfsClient;
use crate::proto::{
    CommitRequest, CommitResponse, EditRequest, EditResponse, ListRequest, ListResponse,
    MetricsRequest, MountRequest, MountResponse, ResetRequest, ResetResponse, ShutdownRequest,
    StatusRequest, StatusResponse, UnmountRequest, UnmountResponse,
};
use crate::{ControlError, Listen};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A connection to the control plane. Cheap to clone; calls take `&self`.
#[derive(Debug, Clone)]
pub struct Client {
    listen: Listen,
    inner: VfsClient<InterceptedService<Channel, Bearer>>,
}

/// Adds `authorization: Bearer <token>` to every request.
#[derive(Debug, Clone)]
struct Bearer(Option<MetadataValue<Ascii>>);

impl Interceptor for Bearer {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        if let Some(value) = &self.0 {
            req.metadata_mut().insert(AUTHORIZATION, value.clone());
        }
        Ok(req)
    }
}

impl Client {
    /// Connect to the service at `listen`. The `token` is sent with every
    /// request (required over TCP, optional over a Unix socket).
    ///
    /// Fails with [`ControlError::NotRunning`] when no service listens there
    /// (socket missing, connection refused).
    pub async fn connect(listen: &Listen, token: Option<String>) -> Result<Client, ControlError> {
        let bearer = match token {
            Some(t) => Some(
                MetadataValue::try_from(format!("Bearer {t}"))
                    .map_err(|_| ControlError::InvalidToken)?,
            ),
            None => None,
        };
        let channel = match listen {
            Listen::Unix(path) => {
                let path = path.clone();
                let connector = tower::service_fn(move |_: Uri| {
                    let path = path.clone();
                    async move { Ok::<_, io::Error>(TokioIo::new(UnixStream::connect(path).await?)) }
                });
                Endpoint::from_static("http://localhost")
                    .connect_timeout(CONNECT_TIMEOUT)
                    .connect_with_connector(connector)
                    .await
            }
            Listen::Tcp(addr) => {
                if !addr.ip().is_loopback() {
                    return Err(ControlError::NonLoopback(*addr));
                }
                let endpoint = Endpoint::from_shared(format!("http://{addr}")).map_err(|source| {
                    ControlError::Transport {
                        listen: listen.clone(),
                        source,
                    }
                })?;
                endpoint.connect_timeout(CONNECT_TIMEOUT).connect().await
            }
        }
        .map_err(|source| {
            if is_not_running(&source) {
                ControlError::NotRunning(listen.clone())
            } else {
                ControlError::Transport {
                    listen: listen.clone(),
                    source,
                }
            }
        })?;
        Ok(Client {
            listen: listen.clone(),
            inner: VfsClient::with_interceptor(channel, Bearer(bearer)),
        })
    }

    /// Like [`Client::connect`], but `Ok(None)` when no service is listening.
    pub async fn try_connect(
        listen: &Listen,
        token: Option<String>,
    ) -> Result<Option<Client>, ControlError> {
        match Client::connect(listen, token).await {
            Ok(client) => Ok(Some(client)),
            Err(ControlError::NotRunning(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The answer to a call, or its error; when the service refused the
    /// connection because of its bounds ([`crate::limits`]), a one-line
    /// error saying which bound.
    async fn call<T>(
        &self,
        call: impl Future<Output = Result<tonic::Response<T>, Status>>,
    ) -> Result<T, Status> {
        let status = match call.await {
            Ok(answer) => return Ok(answer.into_inner()),
            Err(status) => status,
        };
        let why = match refusal(&status) {
            Some(why) => Some(why),
            // The connection closed before its refusal was read: ask again.
            None if is_transport(&status) => probe(&self.listen).await,
            None => None,
        };
        Err(match why {
            Some(why) => Status::resource_exhausted(format!(
                "the spfs service at {} refused the connection: {why}",
                self.listen
            )),
            None => status,
        })
    }

    /// The address this client is connected to.
    pub fn listen(&self) -> &Listen {
        &self.listen
    }

    /// Register a view for a process tree.
    pub async fn mount(&self, req: MountRequest) -> Result<MountResponse, Status> {
        self.call(self.inner.clone().mount(req)).await
    }

    /// Drop a view.
    pub async fn unmount(&self, req: UnmountRequest) -> Result<UnmountResponse, Status> {
        self.call(self.inner.clone().unmount(req)).await
    }

    /// List the views.
    pub async fn list(&self) -> Result<ListResponse, Status> {
        self.call(self.inner.clone().list(ListRequest {})).await
    }

    /// Describe the service.
    pub async fn status(&self) -> Result<StatusResponse, Status> {
        self.call(self.inner.clone().status(StatusRequest {})).await
    }

    /// The status in the Prometheus text format. A service that predates
    /// the call answers `Unimplemented`: then [`crate::metrics::render`]
    /// of [`Client::status`] gives the same text from what it reports.
    pub async fn metrics(&self) -> Result<String, Status> {
        Ok(self
            .call(self.inner.clone().metrics(MetricsRequest {}))
            .await?
            .text)
    }

    /// Turn editing of a runtime on or off.
    pub async fn edit(&self, req: EditRequest) -> Result<EditResponse, Status> {
        self.call(self.inner.clone().edit(req)).await
    }

    /// Drop edits of a runtime.
    pub async fn reset(&self, req: ResetRequest) -> Result<ResetResponse, Status> {
        self.call(self.inner.clone().reset(req)).await
    }

    /// Commit the edits of a runtime as a layer.
    pub async fn commit(&self, req: CommitRequest) -> Result<CommitResponse, Status> {
        self.call(self.inner.clone().commit(req)).await
    }

    /// Ask the service to stop.
    pub async fn shutdown(&self) -> Result<(), Status> {
        self.call(self.inner.clone().shutdown(ShutdownRequest {}))
            .await?;
        Ok(())
    }
}

/// Why the service refused the connection that `status` failed on, if
/// that is what happened: the text of the server's `GOAWAY` (h2 shows it
/// only in its `Debug` form).
fn refusal(status: &Status) -> Option<String> {
    let mut source = status.source();
    while let Some(e) = source {
        let debug = format!("{e:?}");
        if let Some((_, rest)) = debug.split_once(crate::limits::REFUSED) {
            let why = rest.split('"').next().map(str::trim).unwrap_or_default();
            return Some(match why.is_empty() {
                true => "too many connections".to_owned(),
                false => why.to_owned(),
            });
        }
        source = e.source();
    }
    None
}

/// Whether `status` is a failure of the connection rather than an answer.
fn is_transport(status: &Status) -> bool {
    let mut source = status.source();
    while let Some(e) = source {
        if e.is::<tonic::transport::Error>() {
            return true;
        }
        source = e.source();
    }
    false
}

/// How long [`probe`] waits for the service's first bytes, and how many
/// times it tries.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
const PROBE_TRIES: u32 = 3;

/// Why the service at `listen` refuses a new connection now, if it does:
/// the reason in the `GOAWAY` it answers a refused connection with.
async fn probe(listen: &Listen) -> Option<String> {
    for _ in 0..PROBE_TRIES {
        let first = tokio::time::timeout(PROBE_TIMEOUT, first_bytes(listen)).await;
        match first {
            Ok(Ok(got)) => {
                let text = goaway_text(&got)?;
                let (_, why) = text.split_once(crate::limits::REFUSED)?;
                return Some(why.trim().to_owned());
            }
            // Not answered in time: it was let in.
            Err(_) => return None,
            // Cannot connect now (a full backlog): again, shortly.
            Ok(Err(_)) => tokio::time::sleep(PROBE_TIMEOUT / 10).await,
        }
    }
    None
}

/// What a new connection to `listen` receives, until a `GOAWAY` or the
/// end of the connection.
async fn first_bytes(listen: &Listen) -> io::Result<Vec<u8>> {
    let mut conn: Box<dyn tokio::io::AsyncRead + Unpin + Send> = match listen {
        Listen::Unix(path) => Box::new(UnixStream::connect(path).await?),
        Listen::Tcp(addr) => Box::new(tokio::net::TcpStream::connect(addr).await?),
    };
    let mut got = Vec::new();
    let mut buf = [0u8; 512];
    while got.len() < 4096 && goaway_text(&got).is_none() {
        match conn.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            // Closed with the refusal read: what was read is the answer.
            Err(_) if !got.is_empty() => break,
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

/// The debug text of the first HTTP/2 `GOAWAY` frame in `bytes` (frames
/// as a server sends them: nine bytes of header, then the payload), if a
/// whole one is there.
fn goaway_text(bytes: &[u8]) -> Option<String> {
    const HEADER: usize = 9;
    const GOAWAY: u8 = 0x7;
    let mut rest = bytes;
    while rest.len() >= HEADER {
        let len = usize::from(rest[0]) << 16 | usize::from(rest[1]) << 8 | usize::from(rest[2]);
        let frame = rest.get(HEADER..HEADER + len)?;
        if rest[3] == GOAWAY {
            return Some(String::from_utf8_lossy(frame.get(8..)?).into_owned());
        }
        rest = &rest[HEADER + len..];
    }
    None
}

/// True when the connection failed because nothing listens there.
fn is_not_running(err: &tonic::transport::Error) -> bool {
    let mut source = err.source();
    while let Some(e) = source {
        if let Some(io) = e.downcast_ref::<io::Error>() {
            return matches!(
                io.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
            );
        }
        source = e.source();
    }
    false
}
