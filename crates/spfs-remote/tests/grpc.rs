//! The gRPC remote against a real server on loopback: ranged reads and the
//! repository interface end to end.

use std::io::Read;

use spfs_remote::grpc::client::GrpcRepository;
use spfs_remote::grpc::server::{ServerOptions, serve};
use spfs_storage::{FsRepository, Readers, Repository};

/// Serve `repo` on a free loopback port; the port and a stop handle.
fn start(repo: FsRepository) -> (u16, tokio::sync::oneshot::Sender<()>) {
    let (port_tx, port_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            port_tx.send(listener.local_addr().unwrap().port()).unwrap();
            let options = ServerOptions {
                read_only: false,
                token: None,
            };
            let stop = async {
                let _ = stop_rx.await;
            };
            serve(repo, listener, options, stop).await.unwrap();
        });
    });
    (port_rx.recv().unwrap(), stop_tx)
}

#[test]
fn ranged_reads_and_checked_writes() {
    let dir = tempfile::tempdir().unwrap();
    let repo = FsRepository::create(dir.path()).unwrap();
    let bytes: Vec<u8> = (0..(3u32 << 20) + 7)
        .map(|i| (i * 31 % 251) as u8)
        .collect();
    let (digest, _) = repo
        .write_blob_from(&mut &bytes[..], Readers::Everyone)
        .unwrap();
    let (port, stop) = start(repo);
    let remote =
        GrpcRepository::connect("127.0.0.1", port, None, std::time::Duration::from_secs(10))
            .unwrap();
    // Any range, including one across chunks and one past the end.
    for (offset, len) in [
        (0u64, 10u64),
        (1 << 20, 4096),
        ((1 << 20) - 5, 10),
        (3 << 20, 100),
    ] {
        let (mut r, size, public) = remote.read_range(&digest, offset, len).unwrap();
        assert_eq!(size, bytes.len() as u64);
        assert!(public);
        let mut got = Vec::new();
        r.read_to_end(&mut got).unwrap();
        let end = (offset + len).min(bytes.len() as u64) as usize;
        assert_eq!(got, bytes[offset as usize..end], "range {offset}+{len}");
    }
    // The whole payload.
    let mut whole = Vec::new();
    remote
        .open_payload(&digest)
        .unwrap()
        .reader
        .read_to_end(&mut whole)
        .unwrap();
    assert_eq!(whole, bytes);
    // A write whose bytes are not the digest's is refused, nothing stored.
    let other = spfs_model::Digest::of(b"something else");
    let err = remote
        .write_payload(&other, &mut &b"not it"[..], true)
        .unwrap_err();
    assert!(err.to_string().contains(&other.to_string()), "{err}");
    assert!(!remote.has_payload(&other).unwrap());
    // A good one is stored.
    let good = b"good bytes".to_vec();
    let d = spfs_model::Digest::of(&good);
    assert_eq!(remote.write_payload(&d, &mut &good[..], true).unwrap(), 10);
    assert!(remote.has_payload(&d).unwrap());
    let _ = stop.send(());
}
