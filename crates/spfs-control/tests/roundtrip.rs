//! End-to-end tests of the control plane: real servers on a Unix socket in a
//! temporary directory and on loopback TCP, real clients.

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use spfs_control::proto::{
    CommitRequest, CommitResponse, EditRequest, EditResponse, ListResponse, MountRequest,
    MountResponse, ResetRequest, ResetResponse, RuntimeInfo, StatusResponse, UnmountRequest,
    UnmountResponse,
};
use spfs_control::{Bound, Caller, Client, ControlError, ControlHandler, Listen, bind};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::{Code, Status};

const TIMEOUT: Duration = Duration::from_secs(20);

/// Records every call with its caller; returns canned values.
struct TestHandler {
    calls: Mutex<Vec<(&'static str, Caller)>>,
    stop: Mutex<Option<oneshot::Sender<()>>>,
}

impl TestHandler {
    fn record(&self, what: &'static str, caller: &Caller) {
        self.calls.lock().unwrap().push((what, *caller));
    }

    fn calls(&self) -> Vec<(&'static str, Caller)> {
        self.calls.lock().unwrap().clone()
    }
}

impl ControlHandler for TestHandler {
    fn mount(&self, caller: &Caller, req: MountRequest) -> Result<MountResponse, Status> {
        self.record("mount", caller);
        if req.spec == "forbidden" {
            return Err(Status::permission_denied("not yours"));
        }
        Ok(MountResponse {
            runtime: format!("rt-{}-{}", req.root_pid, req.runtime),
            layers: req.spec.split('+').map(str::to_owned).collect(),
            cgroup: String::new(),
        })
    }

    fn unmount(&self, caller: &Caller, req: UnmountRequest) -> Result<UnmountResponse, Status> {
        self.record("unmount", caller);
        Ok(UnmountResponse {
            runtime: format!("{}/{}", req.root_pid, req.runtime),
        })
    }

    fn list(&self, caller: &Caller) -> Result<ListResponse, Status> {
        self.record("list", caller);
        Ok(ListResponse {
            runtimes: vec![RuntimeInfo {
                runtime: "one".into(),
                root_pid: 42,
                spec: "a+b".into(),
                layers: vec!["a".into(), "b".into()],
                age_seconds: 3,
                requests: 7,
                owner_uid: 1000,
                bound: true,
                editable: false,
                writable: false,
            }],
        })
    }

    fn status(&self, caller: &Caller) -> Result<StatusResponse, Status> {
        self.record("status", caller);
        Ok(StatusResponse {
            pid: 1234,
            mountpoint: "/spfs".into(),
            listen: "unix:/x".into(),
            uptime_seconds: 5,
            runtimes: 1,
            requests: 99,
            passthrough: true,
            version: "test".into(),
            ..Default::default()
        })
    }

    fn shutdown(&self, caller: &Caller) -> Result<(), Status> {
        self.record("shutdown", caller);
        if let Some(stop) = self.stop.lock().unwrap().take() {
            let _ = stop.send(());
        }
        Ok(())
    }

    fn edit(&self, caller: &Caller, _req: EditRequest) -> Result<EditResponse, Status> {
        self.record("edit", caller);
        Ok(EditResponse {})
    }

    fn reset(&self, caller: &Caller, _req: ResetRequest) -> Result<ResetResponse, Status> {
        self.record("reset", caller);
        Ok(ResetResponse {})
    }

    fn commit(&self, caller: &Caller, _req: CommitRequest) -> Result<CommitResponse, Status> {
        self.record("commit", caller);
        Ok(CommitResponse::default())
    }
}

/// A running server, its handler and its task.
struct Running {
    listen: Listen,
    handler: Arc<TestHandler>,
    task: JoinHandle<Result<(), ControlError>>,
}

impl Running {
    /// Serve `bound` until the handler's shutdown is called.
    fn start(bound: Bound) -> Running {
        let (tx, rx) = oneshot::channel();
        let handler = Arc::new(TestHandler {
            calls: Mutex::default(),
            stop: Mutex::new(Some(tx)),
        });
        let listen = bound.listen().clone();
        let task = tokio::spawn(bound.serve(handler.clone(), async {
            let _ = rx.await;
        }));
        Running {
            listen,
            handler,
            task,
        }
    }

    /// Stop through the handler (as the RPC would) and wait for the end.
    async fn stop(self) {
        if let Some(stop) = self.handler.stop.lock().unwrap().take() {
            let _ = stop.send(());
        }
        self.join().await;
    }

    async fn join(self) {
        tokio::time::timeout(TIMEOUT, self.task)
            .await
            .expect("server did not stop")
            .expect("server task panicked")
            .expect("server failed");
    }
}

fn unix(path: &Path) -> Listen {
    Listen::Unix(path.to_owned())
}

fn me() -> Caller {
    Caller {
        uid: Some(rustix::process::getuid().as_raw()),
        pid: Some(std::process::id()),
        via_token: false,
    }
}

#[tokio::test]
async fn unix_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("run/spfs/vfs.sock");
    let listen = unix(&path);
    let bound = bind(&listen, None).await.unwrap();
    assert_eq!(bound.listen(), &listen);
    let meta = std::fs::metadata(&path).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o666);
    let server = Running::start(bound);

    let client = tokio::time::timeout(TIMEOUT, Client::connect(&listen, None))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(client.listen(), &listen);

    let mounted = client
        .mount(MountRequest {
            root_pid: 77,
            spec: "a+b+c".into(),
            runtime: "x".into(),
            bind: false,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(mounted.runtime, "rt-77-x");
    assert_eq!(mounted.layers, ["a", "b", "c"]);

    let unmounted = client
        .unmount(UnmountRequest {
            root_pid: 5,
            runtime: "y".into(),
        })
        .await
        .unwrap();
    assert_eq!(unmounted.runtime, "5/y");

    let list = client.list().await.unwrap();
    assert_eq!(list.runtimes.len(), 1);
    assert_eq!(list.runtimes[0].layers, ["a", "b"]);
    assert_eq!(list.runtimes[0].owner_uid, 1000);
    assert!(list.runtimes[0].bound);

    let status = client.status().await.unwrap();
    assert_eq!(status.mountpoint, "/spfs");
    assert_eq!(status.requests, 99);
    assert!(status.passthrough);

    // Metrics: the status in the Prometheus format (the default handler).
    let metrics = client.metrics().await.unwrap();
    assert_eq!(metrics, spfs_control::metrics::render(&status));
    assert!(metrics.contains("spfs_vfs_identified_requests_total 99\n"));

    // Errors of the handler reach the client as they are.
    let denied = client
        .mount(MountRequest {
            root_pid: 1,
            spec: "forbidden".into(),
            runtime: String::new(),
            bind: false,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    assert_eq!(denied.message(), "not yours");

    client.shutdown().await.unwrap();
    let handler = server.handler.clone();
    server.join().await;
    assert!(!path.exists(), "socket file left behind");

    let calls = handler.calls();
    let names: Vec<_> = calls.iter().map(|(n, _)| *n).collect();
    assert_eq!(
        names,
        [
            "mount", "unmount", "list", "status", "status", "mount", "shutdown"
        ]
    );
    for (_, caller) in calls {
        assert_eq!(caller, me());
    }

    // Nobody listens any more.
    assert!(matches!(
        Client::connect(&listen, None).await,
        Err(ControlError::NotRunning(_))
    ));
}

#[tokio::test]
async fn unix_token_is_optional_but_checked() {
    let dir = tempfile::tempdir().unwrap();
    let listen = unix(&dir.path().join("vfs.sock"));
    let token = "s3cret".to_owned();
    let server = Running::start(bind(&listen, Some(token.clone())).await.unwrap());

    let plain = Client::connect(&listen, None).await.unwrap();
    plain.status().await.unwrap();

    let wrong = Client::connect(&listen, Some("nope".into())).await.unwrap();
    assert_eq!(
        wrong.status().await.unwrap_err().code(),
        Code::Unauthenticated
    );

    let right = Client::connect(&listen, Some(token)).await.unwrap();
    right.status().await.unwrap();

    let calls = server.handler.calls();
    assert_eq!(calls.len(), 2);
    assert_eq!(calls[0].1, me());
    assert_eq!(
        calls[1].1,
        Caller {
            via_token: true,
            ..me()
        }
    );
    server.stop().await;
}

#[tokio::test]
async fn tcp_requires_the_token() {
    let token = "0123456789abcdef".to_owned();
    let any_port: Listen = "tcp:127.0.0.1:0".parse().unwrap();

    assert!(matches!(
        bind(&any_port, None).await,
        Err(ControlError::MissingToken(_))
    ));
    assert!(matches!(
        bind(
            &Listen::Tcp("10.0.0.1:1".parse().unwrap()),
            Some(token.clone())
        )
        .await,
        Err(ControlError::NonLoopback(_))
    ));

    let bound = bind(&any_port, Some(token.clone())).await.unwrap();
    let listen = bound.listen().clone();
    match &listen {
        Listen::Tcp(addr) => {
            assert!(addr.ip().is_loopback());
            assert_ne!(addr.port(), 0);
        }
        other => panic!("bound {other}"),
    }
    // The reported address parses back.
    assert_eq!(listen.to_string().parse::<Listen>().unwrap(), listen);
    let server = Running::start(bound);

    let missing = Client::connect(&listen, None).await.unwrap();
    let err = missing.list().await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    let err = missing.shutdown().await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);

    let wrong = Client::connect(&listen, Some("0123456789abcdeF".into()))
        .await
        .unwrap();
    assert_eq!(
        wrong.list().await.unwrap_err().code(),
        Code::Unauthenticated
    );
    let short = Client::connect(&listen, Some("0123".into())).await.unwrap();
    assert_eq!(
        short.status().await.unwrap_err().code(),
        Code::Unauthenticated
    );

    assert!(
        server.handler.calls().is_empty(),
        "handler reached without token"
    );

    let right = Client::connect(&listen, Some(token)).await.unwrap();
    assert_eq!(right.list().await.unwrap().runtimes[0].runtime, "one");
    right.shutdown().await.unwrap();

    let handler = server.handler.clone();
    server.join().await;
    let want = Caller {
        uid: None,
        pid: None,
        via_token: true,
    };
    assert_eq!(handler.calls(), [("list", want), ("shutdown", want)]);
}

#[tokio::test]
async fn token_file_works_with_tcp() {
    let dir = tempfile::tempdir().unwrap();
    let token_path = dir.path().join("token");
    let token = spfs_control::create_token_file(&token_path).unwrap();
    let server = Running::start(
        bind(&"127.0.0.1:0".parse().unwrap(), Some(token))
            .await
            .unwrap(),
    );
    let read = spfs_control::read_token_file(&token_path).unwrap();
    let client = Client::connect(&server.listen, Some(read)).await.unwrap();
    client.status().await.unwrap();
    server.stop().await;
}

#[tokio::test]
async fn stale_regular_file_is_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vfs.sock");
    std::fs::write(&path, "left over").unwrap();
    let listen = unix(&path);
    let server = Running::start(bind(&listen, None).await.unwrap());
    assert!(std::fs::metadata(&path).unwrap().file_type().is_socket());
    Client::connect(&listen, None)
        .await
        .unwrap()
        .status()
        .await
        .unwrap();
    server.stop().await;
    assert!(!path.exists());
}

#[tokio::test]
async fn stale_socket_is_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vfs.sock");
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    assert!(std::fs::metadata(&path).unwrap().file_type().is_socket());
    let listen = unix(&path);
    assert!(
        Client::try_connect(&listen, None).await.unwrap().is_none(),
        "a dead socket counts as not running"
    );

    let server = Running::start(bind(&listen, None).await.unwrap());
    Client::connect(&listen, None)
        .await
        .unwrap()
        .list()
        .await
        .unwrap();
    server.stop().await;
}

#[tokio::test]
async fn second_server_on_live_socket_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vfs.sock");
    let listen = unix(&path);
    let first = Running::start(bind(&listen, None).await.unwrap());

    match bind(&listen, None).await {
        Err(ControlError::AlreadyRunning(l)) => assert_eq!(l, listen),
        other => panic!("second bind: {other:?}"),
    }
    // Even a bound but not yet serving socket counts as live.
    let path2 = dir.path().join("other.sock");
    let listen2 = unix(&path2);
    let bound = bind(&listen2, None).await.unwrap();
    assert!(matches!(
        bind(&listen2, None).await,
        Err(ControlError::AlreadyRunning(_))
    ));
    drop(bound);
    assert!(!path2.exists(), "dropping a Bound removes its socket");

    // The refused server did not disturb the first one.
    assert!(path.exists());
    Client::connect(&listen, None)
        .await
        .unwrap()
        .status()
        .await
        .unwrap();
    first.stop().await;
}

#[tokio::test]
async fn second_tcp_server_is_refused() {
    let token = Some("t".to_owned());
    let first = Running::start(
        bind(&"127.0.0.1:0".parse().unwrap(), token.clone())
            .await
            .unwrap(),
    );
    assert!(matches!(
        bind(&first.listen, token).await,
        Err(ControlError::AlreadyRunning(_))
    ));
    first.stop().await;
}

#[tokio::test]
async fn not_running_is_recognised() {
    let dir = tempfile::tempdir().unwrap();
    let missing = unix(&dir.path().join("nothing.sock"));
    let err = Client::connect(&missing, None).await.unwrap_err();
    assert!(err.is_not_running(), "{err}");
    assert!(Client::try_connect(&missing, None).await.unwrap().is_none());

    // A loopback port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let closed = Listen::Tcp(port);
    let err = Client::connect(&closed, Some("t".into()))
        .await
        .unwrap_err();
    assert!(err.is_not_running(), "{err}");

    // Clients do not send tokens off the machine.
    assert!(matches!(
        Client::connect(
            &Listen::Tcp("10.0.0.1:1".parse().unwrap()),
            Some("t".into())
        )
        .await,
        Err(ControlError::NonLoopback(_))
    ));
}

#[test]
fn listen_parsing() {
    let parse = |s: &str| s.parse::<Listen>();
    assert_eq!(
        parse("unix:/run/spfs.sock").unwrap(),
        Listen::Unix("/run/spfs.sock".into())
    );
    assert_eq!(
        parse("/run/spfs.sock").unwrap(),
        Listen::Unix("/run/spfs.sock".into())
    );
    assert_eq!(
        parse("tcp:127.0.0.1:7737").unwrap(),
        Listen::Tcp("127.0.0.1:7737".parse().unwrap())
    );
    assert_eq!(
        parse("127.0.0.1:7737").unwrap(),
        Listen::Tcp("127.0.0.1:7737".parse().unwrap())
    );
    assert!(matches!(
        parse("tcp:10.0.0.1:1"),
        Err(ControlError::NonLoopback(_))
    ));
    assert!(matches!(
        parse("nonsense"),
        Err(ControlError::InvalidListen { .. })
    ));
    for s in ["unix:/a/b.sock", "tcp:127.0.0.1:7737", "tcp:[::1]:1"] {
        assert_eq!(parse(s).unwrap().to_string(), s);
    }
}

#[tokio::test]
async fn oversized_requests_are_refused_before_the_handler() {
    let dir = tempfile::tempdir().unwrap();
    let listen = unix(&dir.path().join("vfs.sock"));
    let server = Running::start(bind(&listen, None).await.unwrap());
    let client = Client::connect(&listen, None).await.unwrap();
    let huge = "a".repeat(spfs_control::server::MAX_REQUEST_BYTES + 1);
    let refused = client
        .mount(MountRequest {
            root_pid: 1,
            spec: huge,
            runtime: String::new(),
            bind: false,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::OutOfRange, "{refused:?}");
    // The server still answers, and the handler never saw the request.
    client.status().await.unwrap();
    let calls: Vec<_> = server.handler.calls().iter().map(|(n, _)| *n).collect();
    assert_eq!(calls, ["status"]);
    server.stop().await;
}

#[tokio::test]
async fn connections_past_the_bound_are_refused_with_the_cause() {
    let dir = tempfile::tempdir().unwrap();
    let listen = unix(&dir.path().join("vfs.sock"));
    let limits = spfs_control::ConnectionLimits {
        per_peer: 2,
        total: 2,
        idle: Duration::from_millis(300),
    };
    let bound = bind(&listen, None).await.unwrap().with_limits(limits);
    let server = Running::start(bound);
    let Listen::Unix(path) = &listen else {
        unreachable!()
    };
    // Two idle connections use the bound (root's too: the total).
    let held: Vec<_> = (0..2)
        .map(|_| std::os::unix::net::UnixStream::connect(path).unwrap())
        .collect();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let refused = async {
        Client::connect(&listen, None).await?.status().await?;
        Ok::<_, Box<dyn std::error::Error>>(())
    }
    .await
    .expect_err("a third connection is refused");
    let text = refused.to_string();
    assert!(
        text.contains("refused the connection: the service holds 2 control connections"),
        "{text}"
    );
    assert!(!text.contains('\n'), "{text}");
    // Idle connections are closed: then a client gets in again.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let client = Client::connect(&listen, None).await.unwrap();
    client.status().await.unwrap();
    // A client whose connection was closed while idle connects again.
    tokio::time::sleep(Duration::from_millis(700)).await;
    client.status().await.unwrap();
    drop(held);
    drop(client);
    server.stop().await;
}
