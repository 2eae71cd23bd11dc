//! Measures what routing a request costs: the first request of a thread
//! (pidfd + /proc read) and a request of an already-known thread (cache
//! hit, checked with one PIDFD_GET_INFO). Prints one line per case, in ns.
//!
//! `cargo run --release -p spfs-fuse --example route_cost [ITERATIONS]`

use std::sync::Arc;
use std::time::Instant;

use spfs_fuse::route::Router;
use spfs_vfs::Registry;

fn main() {
    let iterations: u32 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let registry = Arc::new(Registry::default());
    let router = Router::new(registry);
    let tid = rustix::thread::gettid().as_raw_nonzero().get() as u32;

    // Cold: forget before each lookup so every call takes the slow path.
    let cold_n = 10_000.min(iterations);
    let start = Instant::now();
    for _ in 0..cold_n {
        router.forget(tid);
        std::hint::black_box(router.route(tid));
    }
    let cold = start.elapsed().as_nanos() as f64 / cold_n as f64;

    // Warm: the thread is known; each call asks its pidfd for its cgroup id.
    router.route(tid);
    let start = Instant::now();
    for _ in 0..iterations {
        std::hint::black_box(router.route(std::hint::black_box(tid)));
    }
    let warm = start.elapsed().as_nanos() as f64 / iterations as f64;
    println!("route_first_request_ns {cold:.0}");
    println!("route_known_process_ns {warm:.0}");
}
