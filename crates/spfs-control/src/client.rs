//! The client side: [`Client`] connects to the service over its Unix socket
//! or loopback TCP (sending the bearer token when given) and calls the RPCs.

use std::error::Error as _;
use std::io;
use std::time::Duration;

use hyper_util::rt::TokioIo;
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

    /// A call's error, or, when the service refused the connection
    /// because of its bounds ([`crate::limits`]), a one-line error saying
    /// which bound.
    fn explain(&self, status: Status) -> Status {
        match refusal(&status) {
            Some(why) => Status::resource_exhausted(format!(
                "the spfs service at {} refused the connection: {why}",
                self.listen
            )),
            None => status,
        }
    }

    /// The address this client is connected to.
    pub fn listen(&self) -> &Listen {
        &self.listen
    }

    /// Register a view for a process tree.
    pub async fn mount(&self, req: MountRequest) -> Result<MountResponse, Status> {
        Ok(self
            .inner
            .clone()
            .mount(req)
            .await
            .map_err(|s| self.explain(s))?
            .into_inner())
    }

    /// Drop a view.
    pub async fn unmount(&self, req: UnmountRequest) -> Result<UnmountResponse, Status> {
        Ok(self
            .inner
            .clone()
            .unmount(req)
            .await
            .map_err(|s| self.explain(s))?
            .into_inner())
    }

    /// List the views.
    pub async fn list(&self) -> Result<ListResponse, Status> {
        Ok(self
            .inner
            .clone()
            .list(ListRequest {})
            .await
            .map_err(|s| self.explain(s))?
            .into_inner())
    }

    /// Describe the service.
    pub async fn status(&self) -> Result<StatusResponse, Status> {
        Ok(self
            .inner
            .clone()
            .status(StatusRequest {})
            .await
            .map_err(|s| self.explain(s))?
            .into_inner())
    }

    /// The status in the Prometheus text format. A service that predates
    /// the call answers `Unimplemented`: then [`crate::metrics::render`]
    /// of [`Client::status`] gives the same text from what it reports.
    pub async fn metrics(&self) -> Result<String, Status> {
        Ok(self
            .inner
            .clone()
            .metrics(MetricsRequest {})
            .await
            .map_err(|s| self.explain(s))?
            .into_inner()
            .text)
    }

    /// Turn editing of a runtime on or off.
    pub async fn edit(&self, req: EditRequest) -> Result<EditResponse, Status> {
        Ok(self
            .inner
            .clone()
            .edit(req)
            .await
            .map_err(|s| self.explain(s))?
            .into_inner())
    }

    /// Drop edits of a runtime.
    pub async fn reset(&self, req: ResetRequest) -> Result<ResetResponse, Status> {
        Ok(self
            .inner
            .clone()
            .reset(req)
            .await
            .map_err(|s| self.explain(s))?
            .into_inner())
    }

    /// Commit the edits of a runtime as a layer.
    pub async fn commit(&self, req: CommitRequest) -> Result<CommitResponse, Status> {
        Ok(self
            .inner
            .clone()
            .commit(req)
            .await
            .map_err(|s| self.explain(s))?
            .into_inner())
    }

    /// Ask the service to stop.
    pub async fn shutdown(&self) -> Result<(), Status> {
        self.inner
            .clone()
            .shutdown(ShutdownRequest {})
            .await
            .map_err(|s| self.explain(s))?;
        Ok(())
    }
}

/// Why the service refused the connection that `status` failed on, if
/// that is what happened: the text of the server's `GOAWAY` (h2 shows it
/// only in its `Debug` form).
fn refusal(status: &Status) -> Option<String> {
    if status.code() != tonic::Code::ResourceExhausted {
        return None;
    }
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
