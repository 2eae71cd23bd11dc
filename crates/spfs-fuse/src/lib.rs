//! The Linux host of the spfs VFS service.
//!
//! - [`keeper`]: the service's long-lived process: it holds the locks,
//!   the control socket and the mount's FUSE connection, and runs the
//!   service process (the worker), replacing it on restart, upgrade or
//!   crash;
//! - [`service`]: the worker (the views, the control plane, cleanup);
//! - [`handover`]: handing the FUSE connection from one worker to the next;
//! - [`ledger`]: the service's own record of its runtimes, from which the
//!   next worker takes them over;
//! - [`host`]: the FUSE adapter over the platform-neutral `spfs-vfs` core;
//! - [`handler`]: the control plane's requests (registering a view binds a
//!   process tree to a runtime cgroup);
//! - [`route`]: which runtime a calling thread belongs to (pidfd + cgroup);
//! - [`process`]: naming processes by pidfd, and pinning a PID while acting
//!   on it;
//! - [`cgroup`]: the runtimes' cgroups and the watcher that notices when a
//!   runtime's process tree has exited;
//! - [`mounts`]: finding and clearing stale mounts;
//! - [`bind`]: bound views, a mount namespace whose mount point shows one
//!   view, so the kernel caches all of its names;
//! - [`launch`]: starting the service on demand from a client, without races;
//! - [`stats`]: request counts and latencies, and the status's figures;
//! - [`exporter`]: the loopback metrics port (`vfs.metrics_listen`).

pub mod bind;
pub mod cgroup;
pub mod exporter;
pub mod handler;
pub mod handover;
pub mod host;
pub mod keeper;
pub mod launch;
pub mod ledger;
pub mod locks;
pub mod logfile;
pub mod mounts;
pub mod process;
pub mod route;
pub mod service;
pub mod stats;
