//! The gRPC remote: `spfs server` ([`server`]) and its client ([`client`]),
//! speaking `proto/repo.proto`. Payloads move in chunks of [`CHUNK`] bytes
//! in both directions, and can be read from any offset.

pub mod client;
pub mod server;

#[allow(clippy::all, clippy::pedantic)]
pub(crate) mod proto {
    tonic::include_proto!("spfs.repo");
}

use spfs_model::Digest;
use tonic::Status;

/// The size of a payload chunk on the wire.
pub const CHUNK: usize = 1 << 20;

fn parse_digest(text: &str) -> Result<Digest, Status> {
    Digest::parse(text).map_err(|e| Status::invalid_argument(format!("bad digest '{text}': {e}")))
}
