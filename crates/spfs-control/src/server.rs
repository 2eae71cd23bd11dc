//! The server side: the [`ControlHandler`] trait the service implements, and
//! the transport that runs it ([`bind`], [`Bound::serve`], [`serve`]):
//! socket setup and cleanup, caller identification, token check, and the
//! bounds on connections held ([`crate::limits`]).

use std::fs;
use std::future::Future;
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, UnixListener, UnixStream};
use tonic::transport::server::{TcpConnectInfo, UdsConnectInfo};
use tonic::{Request, Response, Status};

use crate::auth::{Caller, identify};
use crate::limits::{ConnInfo, ConnectionLimits, incoming};
use crate::proto::vfs_server::{Vfs, VfsServer};
use crate::proto::{
    CommitRequest, CommitResponse, EditRequest, EditResponse, ListRequest, ListResponse,
    MetricsRequest, MetricsResponse, MountRequest, MountResponse, ResetRequest, ResetResponse,
    ShutdownRequest, ShutdownResponse, StatusRequest, StatusResponse, UnmountRequest,
    UnmountResponse,
};
use crate::{ControlError, Listen};

/// What the service does for each request. The transport has already
/// identified the [`Caller`] (and checked the token over TCP); the handler
/// decides whether that caller may do what it asks.
///
/// Methods are synchronous: they run on tokio's blocking pool, so they may
/// do file I/O.
pub trait ControlHandler: Send + Sync + 'static {
    /// Register a view for a process tree.
    fn mount(&self, caller: &Caller, req: MountRequest) -> Result<MountResponse, Status>;
    /// Drop a view.
    fn unmount(&self, caller: &Caller, req: UnmountRequest) -> Result<UnmountResponse, Status>;
    /// List the views.
    fn list(&self, caller: &Caller) -> Result<ListResponse, Status>;
    /// Describe the service.
    fn status(&self, caller: &Caller) -> Result<StatusResponse, Status>;
    /// The status in the Prometheus text format (by default: rendered from
    /// [`ControlHandler::status`] by [`crate::metrics::render`]).
    fn metrics(&self, caller: &Caller) -> Result<MetricsResponse, Status> {
        self.status(caller).map(|s| MetricsResponse {
            text: crate::metrics::render(&s),
        })
    }
    /// Stop the service. The handler is expected to make the `shutdown`
    /// future given to [`Bound::serve`] complete; in-flight requests (this
    /// one included) are answered before the server stops.
    fn shutdown(&self, caller: &Caller) -> Result<(), Status>;
    /// Turn editing of a runtime on or off.
    fn edit(&self, caller: &Caller, req: EditRequest) -> Result<EditResponse, Status>;
    /// Drop edits of a runtime.
    fn reset(&self, caller: &Caller, req: ResetRequest) -> Result<ResetResponse, Status>;
    /// Commit the edits of a runtime as a layer.
    fn commit(&self, caller: &Caller, req: CommitRequest) -> Result<CommitResponse, Status>;
}

/// A bound control socket, accepting connections (they queue until
/// [`Bound::serve`] runs). Returned by [`bind`].
///
/// Once `bind` has returned, clients can connect: that is the moment to
/// report readiness. Dropping a `Bound` over a Unix socket removes the
/// socket file.
#[derive(Debug)]
pub struct Bound {
    listen: Listen,
    token: Option<Arc<str>>,
    listener: Listener,
    limits: ConnectionLimits,
}

#[derive(Debug)]
enum Listener {
    Unix {
        listener: UnixListener,
        /// Removed when the server stops (none for an inherited socket:
        /// its file is the process that bound it's to remove).
        _file: Option<SocketFile>,
    },
    Tcp(TcpListener),
}

/// A bound control socket to be served by another process (the VFS
/// service's worker): its descriptor, and the socket file, removed when
/// this value is dropped.
#[derive(Debug)]
pub struct Inheritable {
    pub listen: Listen,
    pub fd: std::os::fd::OwnedFd,
    _file: Option<SocketFile>,
}

/// The largest request the server decodes: a spec of at most 64 KiB and a
/// little more. A larger message is refused before it is decoded (and
/// before any of it is kept).
pub const MAX_REQUEST_BYTES: usize = 128 * 1024;

/// Bind the control socket.
///
/// * Unix: creates the parent directory; a leftover socket file (or any
///   non-directory file) at the path on which no one answers is removed, a
///   live one gives [`ControlError::AlreadyRunning`]. The socket is made
///   mode 0666: every local user may connect, and each request is
///   authorized from its peer credentials. A token, if given, is accepted
///   (and checked) but not required.
/// * TCP: loopback only ([`ControlError::NonLoopback`]); a non-empty token
///   is required ([`ControlError::MissingToken`]) and every request must
///   carry it. Port 0 picks a free port: see [`Bound::listen`].
pub async fn bind(listen: &Listen, token: Option<String>) -> Result<Bound, ControlError> {
    let token: Option<Arc<str>> = token.filter(|t| !t.is_empty()).map(Arc::from);
    let (listen, listener) = match listen {
        Listen::Unix(path) => {
            let (listener, file) = bind_unix(listen, path).await?;
            (
                listen.clone(),
                Listener::Unix {
                    listener,
                    _file: Some(file),
                },
            )
        }
        Listen::Tcp(addr) => {
            if !addr.ip().is_loopback() {
                return Err(ControlError::NonLoopback(*addr));
            }
            if token.is_none() {
                return Err(ControlError::MissingToken(listen.clone()));
            }
            let listener = TcpListener::bind(addr)
                .await
                .map_err(|source| match source.kind() {
                    io::ErrorKind::AddrInUse => ControlError::AlreadyRunning(listen.clone()),
                    _ => ControlError::Bind {
                        addr: *addr,
                        source,
                    },
                })?;
            let local = listener.local_addr().map_err(|source| ControlError::Bind {
                addr: *addr,
                source,
            })?;
            (Listen::Tcp(local), Listener::Tcp(listener))
        }
    };
    tracing::debug!(%listen, "control socket bound");
    Ok(Bound {
        listen,
        token,
        listener,
        limits: ConnectionLimits::default(),
    })
}

/// [`bind`] then [`Bound::serve`], for callers that need no readiness signal.
pub async fn serve(
    listen: &Listen,
    token: Option<String>,
    handler: Arc<dyn ControlHandler>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ControlError> {
    bind(listen, token).await?.serve(handler, shutdown).await
}

/// Serve a socket bound by another process (`fd`, a listening Unix or
/// TCP socket), as [`bind`] would have bound `listen`. Must be called
/// within a tokio runtime.
pub fn adopt(
    listen: Listen,
    token: Option<String>,
    fd: std::os::fd::OwnedFd,
) -> Result<Bound, ControlError> {
    let token: Option<Arc<str>> = token.filter(|t| !t.is_empty()).map(Arc::from);
    let io_err = |source| ControlError::Io {
        action: "adopt the socket",
        path: PathBuf::from(listen.to_string()),
        source,
    };
    let listener = match &listen {
        Listen::Unix(_) => {
            let std = std::os::unix::net::UnixListener::from(fd);
            std.set_nonblocking(true).map_err(io_err)?;
            Listener::Unix {
                listener: UnixListener::from_std(std).map_err(io_err)?,
                _file: None,
            }
        }
        Listen::Tcp(_) => {
            if token.is_none() {
                return Err(ControlError::MissingToken(listen.clone()));
            }
            let std = std::net::TcpListener::from(fd);
            std.set_nonblocking(true).map_err(io_err)?;
            Listener::Tcp(TcpListener::from_std(std).map_err(io_err)?)
        }
    };
    Ok(Bound {
        listen,
        token,
        listener,
        limits: ConnectionLimits::default(),
    })
}

impl Bound {
    /// Hold connections within `limits` instead of the default
    /// ([`ConnectionLimits::default`]).
    pub fn with_limits(mut self, limits: ConnectionLimits) -> Bound {
        self.limits = limits;
        self
    }

    /// The bounds on the connections [`Bound::serve`] holds.
    pub fn limits(&self) -> ConnectionLimits {
        self.limits
    }

    /// The address actually bound (with the real port when 0 was asked).
    pub fn listen(&self) -> &Listen {
        &self.listen
    }

    /// Hand the socket to another process to serve ([`adopt`] there).
    pub fn into_inheritable(self) -> Result<Inheritable, ControlError> {
        let listen = self.listen;
        let io_err = |source| ControlError::Io {
            action: "hand over the socket",
            path: PathBuf::from(listen.to_string()),
            source,
        };
        let (fd, file) = match self.listener {
            Listener::Unix { listener, _file } => {
                let std = listener.into_std().map_err(io_err)?;
                (std::os::fd::OwnedFd::from(std), _file)
            }
            Listener::Tcp(listener) => {
                let std = listener.into_std().map_err(io_err)?;
                (std::os::fd::OwnedFd::from(std), None)
            }
        };
        Ok(Inheritable {
            listen,
            fd,
            _file: file,
        })
    }

    /// Answer requests with `handler` until `shutdown` completes, then
    /// finish the requests in flight and return. A Unix socket file is
    /// removed on return. Connections are held within [`Bound::limits`].
    pub async fn serve(
        self,
        handler: Arc<dyn ControlHandler>,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ControlError> {
        let Bound {
            listen,
            token,
            listener,
            limits,
        } = self;
        let service = |require_token| {
            VfsServer::new(Service {
                handler,
                token,
                require_token,
                turns: Arc::default(),
            })
            .max_decoding_message_size(MAX_REQUEST_BYTES)
        };
        let mut builder = tonic::transport::Server::builder();
        let result = match listener {
            Listener::Unix {
                listener,
                _file: file,
            } => {
                let result = builder
                    .add_service(service(false))
                    .serve_with_incoming_shutdown(incoming(listener, limits), shutdown)
                    .await;
                drop(file);
                result
            }
            Listener::Tcp(listener) => {
                builder
                    .add_service(service(true))
                    .serve_with_incoming_shutdown(incoming(listener, limits), shutdown)
                    .await
            }
        };
        tracing::debug!(%listen, "control socket closed");
        result.map_err(|source| ControlError::Transport { listen, source })
    }
}

async fn bind_unix(
    listen: &Listen,
    path: &Path,
) -> Result<(UnixListener, SocketFile), ControlError> {
    let io_err = |action, source| ControlError::Io {
        action,
        path: path.to_owned(),
        source,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir).map_err(|e| io_err("create the directory of", e))?;
    }
    remove_stale_socket(listen, path).await?;
    let listener = UnixListener::bind(path).map_err(|e| match e.kind() {
        io::ErrorKind::AddrInUse => ControlError::AlreadyRunning(listen.clone()),
        _ => io_err("bind the socket", e),
    })?;
    let file = SocketFile::new(path).map_err(|e| io_err("inspect the socket", e))?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o666))
        .map_err(|e| io_err("set the mode of the socket", e))?;
    Ok((listener, file))
}

/// Remove whatever is at `path` unless a server answers there.
async fn remove_stale_socket(listen: &Listen, path: &Path) -> Result<(), ControlError> {
    let io_err = |action, source| ControlError::Io {
        action,
        path: path.to_owned(),
        source,
    };
    match fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_err("inspect the socket", e)),
        Ok(meta) if meta.is_dir() => {
            return Err(io_err(
                "bind the socket",
                io::Error::new(io::ErrorKind::AlreadyExists, "a directory is in the way"),
            ));
        }
        Ok(_) => {}
    }
    // A live server that is too busy to accept (full backlog) counts as live.
    match tokio::time::timeout(Duration::from_secs(2), UnixStream::connect(path)).await {
        Ok(Ok(_)) | Err(_) => Err(ControlError::AlreadyRunning(listen.clone())),
        Ok(Err(e))
            if matches!(
                e.kind(),
                io::ErrorKind::ConnectionRefused | io::ErrorKind::NotFound
            ) =>
        {
            tracing::info!(path = %path.display(), "removing stale control socket");
            match fs::remove_file(path) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => {
                    Err(io_err("remove the stale socket", e))
                }
                _ => Ok(()),
            }
        }
        Ok(Err(e)) => Err(io_err("probe the socket", e)),
    }
}

/// Removes the socket file on drop, unless it was replaced meanwhile.
#[derive(Debug)]
struct SocketFile {
    path: PathBuf,
    dev: u64,
    ino: u64,
}

impl SocketFile {
    fn new(path: &Path) -> io::Result<SocketFile> {
        let meta = fs::symlink_metadata(path)?;
        Ok(SocketFile {
            path: path.to_owned(),
            dev: meta.dev(),
            ino: meta.ino(),
        })
    }
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        if let Ok(meta) = fs::symlink_metadata(&self.path)
            && meta.dev() == self.dev
            && meta.ino() == self.ino
            && let Err(e) = fs::remove_file(&self.path)
        {
            tracing::warn!(path = %self.path.display(), error = %e, "cannot remove control socket");
        }
    }
}

/// The tonic service: identifies the caller, then runs the handler on the
/// blocking pool.
struct Service {
    handler: Arc<dyn ControlHandler>,
    token: Option<Arc<str>>,
    require_token: bool,
    /// Each user's turns (see [`MAX_IN_FLIGHT_PER_USER`]).
    turns: Arc<Turns>,
}

/// Requests one user (other than root, or a token holder) may have under
/// way at once; more wait (without a thread) for their turn, at most
/// [`IN_FLIGHT_WAIT`]. Every request runs on one shared pool of threads
/// (tokio's blocking pool, 512): without a bound, one user's requests that
/// wait (for a lock, a registration slot) could take them all, and every
/// other user's `status`, `list` or `spfs run` would wait behind them.
pub const MAX_IN_FLIGHT_PER_USER: usize = 16;
/// How long a user's request waits for one of their turns.
pub const IN_FLIGHT_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

/// The turns of each user (see [`MAX_IN_FLIGHT_PER_USER`]).
type Turns = std::sync::Mutex<std::collections::HashMap<u32, Arc<tokio::sync::Semaphore>>>;

/// Wait for one of `caller`'s turns (root and token holders have no
/// bound: `None`).
async fn take_turn(
    turns: &Turns,
    caller: &Caller,
) -> Result<Option<tokio::sync::OwnedSemaphorePermit>, Status> {
    let uid = match caller.uid {
        Some(uid) if uid != 0 && !caller.via_token => uid,
        _ => return Ok(None),
    };
    let mine = Arc::clone(
        turns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(uid)
            .or_insert_with(|| Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT_PER_USER))),
    );
    match tokio::time::timeout(IN_FLIGHT_WAIT, mine.acquire_owned()).await {
        Ok(Ok(permit)) => Ok(Some(permit)),
        _ => Err(Status::resource_exhausted(format!(
            "user {uid} has had {MAX_IN_FLIGHT_PER_USER} requests under way in the VFS service \
             for {} s; try again when they finish",
            IN_FLIGHT_WAIT.as_secs()
        ))),
    }
}

impl Service {
    async fn run<Req, Resp>(
        &self,
        req: Request<Req>,
        f: impl FnOnce(&dyn ControlHandler, &Caller, Req) -> Result<Resp, Status> + Send + 'static,
    ) -> Result<Response<Resp>, Status>
    where
        Req: Send + 'static,
        Resp: Send + 'static,
    {
        // Counted in flight until answered: the connection is not idle.
        let _in_flight = activity(&req).map(|a| a.begin());
        let caller = identify(&req, self.token.as_deref(), self.require_token)?;
        // The turn is held until the handler returns (not when the client
        // goes: the work goes on).
        let turn = take_turn(&self.turns, &caller).await?;
        let handler = Arc::clone(&self.handler);
        let msg = req.into_inner();
        tokio::task::spawn_blocking(move || {
            let _turn = turn;
            f(&*handler, &caller, msg)
        })
        .await
        .map_err(|e| Status::internal(format!("control handler failed: {e}")))?
        .map(Response::new)
    }
}

/// The activity record of the connection `req` came on.
fn activity<T>(req: &Request<T>) -> Option<Arc<crate::limits::Activity>> {
    let ext = req.extensions();
    ext.get::<ConnInfo<UdsConnectInfo>>()
        .map(|c| Arc::clone(&c.activity))
        .or_else(|| {
            ext.get::<ConnInfo<TcpConnectInfo>>()
                .map(|c| Arc::clone(&c.activity))
        })
}

#[tonic::async_trait]
impl Vfs for Service {
    async fn mount(&self, req: Request<MountRequest>) -> Result<Response<MountResponse>, Status> {
        self.run(req, |h, c, m| h.mount(c, m)).await
    }

    async fn unmount(
        &self,
        req: Request<UnmountRequest>,
    ) -> Result<Response<UnmountResponse>, Status> {
        self.run(req, |h, c, m| h.unmount(c, m)).await
    }

    async fn list(&self, req: Request<ListRequest>) -> Result<Response<ListResponse>, Status> {
        self.run(req, |h, c, _| h.list(c)).await
    }

    async fn status(
        &self,
        req: Request<StatusRequest>,
    ) -> Result<Response<StatusResponse>, Status> {
        self.run(req, |h, c, _| h.status(c)).await
    }

    async fn metrics(
        &self,
        req: Request<MetricsRequest>,
    ) -> Result<Response<MetricsResponse>, Status> {
        self.run(req, |h, c, _| h.metrics(c)).await
    }

    async fn shutdown(
        &self,
        req: Request<ShutdownRequest>,
    ) -> Result<Response<ShutdownResponse>, Status> {
        self.run(req, |h, c, _| h.shutdown(c).map(|()| ShutdownResponse {}))
            .await
    }

    async fn edit(&self, req: Request<EditRequest>) -> Result<Response<EditResponse>, Status> {
        self.run(req, |h, c, m| h.edit(c, m)).await
    }

    async fn reset(&self, req: Request<ResetRequest>) -> Result<Response<ResetResponse>, Status> {
        self.run(req, |h, c, m| h.reset(c, m)).await
    }

    async fn commit(
        &self,
        req: Request<CommitRequest>,
    ) -> Result<Response<CommitResponse>, Status> {
        self.run(req, |h, c, m| h.commit(c, m)).await
    }
}
