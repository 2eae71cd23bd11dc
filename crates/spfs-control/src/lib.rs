//! The control plane of the spfs VFS service.
//!
//! One service per host owns the `/spfs` mount; clients talk to it over gRPC
//! (see `proto/vfs.proto`) to register, drop and list views, ask for its
//! status, or stop it. This crate owns the protocol, the transports (a Unix
//! socket, or a loopback-only TCP port guarded by a bearer token) and the
//! identification of callers. What a caller may do is decided by the
//! service's [`ControlHandler`].
//!
//! Server side: [`bind`] then [`Bound::serve`] (or [`serve`] in one go);
//! the connections it holds are bounded ([`limits`]).
//! Client side: [`Client::connect`] / [`Client::try_connect`].
//! [`metrics::render`] turns a status into the Prometheus text format.

pub mod auth;
pub mod client;
pub mod limits;
pub mod listen;
pub mod metrics;
pub mod server;

/// The code generated from `proto/vfs.proto`: messages, `vfs_client` and
/// `vfs_server`.
#[allow(clippy::all, missing_docs)]
pub mod proto {
    tonic::include_proto!("spfs.vfs.v1");
}

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;

pub use auth::{Caller, create_token_file, read_token_file};
pub use client::Client;
pub use limits::ConnectionLimits;
pub use listen::Listen;
pub use server::{Bound, ControlHandler, Inheritable, adopt, bind, serve};

/// Everything that can go wrong while setting up the transport, on either side.
/// Errors of individual calls are `tonic::Status`.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// A filesystem operation on a path failed.
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        /// What was being done, e.g. "bind the socket".
        action: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// Binding a TCP address failed.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// Another service already answers on this address.
    #[error("a service is already listening on {0}")]
    AlreadyRunning(Listen),
    /// No service answers on this address (socket missing, connection refused).
    #[error("no service is listening on {0}")]
    NotRunning(Listen),
    /// Any other transport failure.
    #[error("transport error on {listen}: {source}")]
    Transport {
        /// The address.
        listen: Listen,
        /// The underlying error.
        #[source]
        source: tonic::transport::Error,
    },
    /// A TCP address that is not loopback was given.
    #[error("{0} is not a loopback address: the control plane only uses loopback TCP")]
    NonLoopback(SocketAddr),
    /// Listening on TCP without a token.
    #[error("a token is required to listen on {0}")]
    MissingToken(Listen),
    /// A token that cannot be sent in a header.
    #[error("invalid token: it must be printable ASCII")]
    InvalidToken,
    /// A listen address that cannot be parsed.
    #[error("invalid listen address {input:?}: {reason}")]
    InvalidListen {
        /// What was given.
        input: String,
        /// Why it was refused.
        reason: &'static str,
    },
}

impl ControlError {
    /// True when the error means "no service is listening there".
    pub fn is_not_running(&self) -> bool {
        matches!(self, ControlError::NotRunning(_))
    }
}
