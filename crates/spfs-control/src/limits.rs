//! Bounds on the control connections the server holds open.
//!
//! Every connection is a descriptor of the service, which serves every
//! user: a user who could open connections without end would leave the
//! service none for its own work (routing, opening files). So the server
//! accepts connections through [`incoming`], which admits a new one only
//! within [`ConnectionLimits`]:
//!
//! * per peer: a user id over the Unix socket (root is exempt), a source
//!   address over TCP (counted before any token is seen);
//! * in total, whoever connects;
//! * a connection with no request in flight is closed after
//!   [`ConnectionLimits::idle`] since its last request ended (or since it
//!   was made): bytes that are no request (HTTP/2 pings, a preface sent
//!   slowly) do not keep it.
//!
//! A connection beyond a bound is answered at once with an HTTP/2
//! `GOAWAY` (`ENHANCE_YOUR_CALM`, which gRPC clients report as
//! `ResourceExhausted`) naming the bound, and closed.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::sync::mpsc;
use tokio::time::Sleep;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::Connected;

/// Connections a non-root user (or a TCP source) may hold at once.
pub const PER_PEER: usize = 64;

/// How long a connection with no request in flight is kept.
pub const IDLE: Duration = Duration::from_secs(60);

/// The fewest and the most connections held at once, all peers together
/// (between them: an eighth of the descriptor limit).
const TOTAL_MIN: usize = 128;
const TOTAL_MAX: usize = 4096;

/// The debug text of the `GOAWAY` a refused connection gets starts with
/// this (the client recognises it).
pub const REFUSED: &str = "spfs control: connection refused:";

/// How many connections the server holds open, and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Connections one non-root user (Unix socket) or one source address
    /// (TCP) may hold at once.
    pub per_peer: usize,
    /// Connections held at once, all peers together (root included).
    pub total: usize,
    /// A connection with no request in flight for this long is closed.
    pub idle: Duration,
}

impl Default for ConnectionLimits {
    /// [`PER_PEER`], an eighth of the process's descriptor limit in total
    /// (at least 128, at most 4096), and [`IDLE`].
    fn default() -> Self {
        let nofile = rustix::process::getrlimit(rustix::process::Resource::Nofile).current;
        let total = nofile.map_or(TOTAL_MAX, |n| usize::try_from(n / 8).unwrap_or(TOTAL_MAX));
        ConnectionLimits {
            per_peer: PER_PEER,
            total: total.clamp(TOTAL_MIN, TOTAL_MAX),
            idle: IDLE,
        }
    }
}

/// Who a connection is counted against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Peer {
    /// A user, from the socket's credentials.
    User(u32),
    /// A TCP source address.
    Source(IpAddr),
    /// A Unix peer without credentials: all such share one count.
    Unknown,
}

impl Peer {
    fn exempt(self) -> bool {
        self == Peer::User(0)
    }
}

impl std::fmt::Display for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Peer::User(uid) => write!(f, "user {uid}"),
            Peer::Source(ip) => write!(f, "{ip}"),
            Peer::Unknown => f.write_str("an unidentified peer"),
        }
    }
}

/// The connections held now, per peer and in total.
struct Gate {
    limits: ConnectionLimits,
    held: Mutex<Held>,
    /// When a refusal was last logged (seconds since `start`), so that a
    /// flood of refusals logs a line a minute at most.
    logged: AtomicU64,
    start: Instant,
    /// Refused connections being told why (see [`Gate::refuse`]).
    refusing: AtomicUsize,
}

#[derive(Default)]
struct Held {
    total: usize,
    per_peer: HashMap<Peer, usize>,
}

/// One admitted connection; dropping it counts it off.
struct Ticket {
    gate: Arc<Gate>,
    peer: Peer,
}

impl Gate {
    fn admit(self: &Arc<Gate>, peer: Peer) -> Result<Ticket, String> {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        if held.total >= self.limits.total {
            return Err(format!(
                "the service holds {} control connections, its most",
                self.limits.total
            ));
        }
        let mine = held.per_peer.get(&peer).copied().unwrap_or(0);
        if !peer.exempt() && mine >= self.limits.per_peer {
            return Err(format!(
                "too many connections from {peer} (at most {} at once)",
                self.limits.per_peer
            ));
        }
        held.total += 1;
        held.per_peer.insert(peer, mine + 1);
        Ok(Ticket {
            gate: Arc::clone(self),
            peer,
        })
    }

    fn log_refusal(&self, why: &str) {
        let now = self.start.elapsed().as_secs() + 60;
        let last = self.logged.load(Ordering::Relaxed);
        if now >= last + 60
            && self
                .logged
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!("refusing control connections: {why} (logged once a minute)");
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut held = self.gate.held.lock().unwrap_or_else(|p| p.into_inner());
        held.total = held.total.saturating_sub(1);
        if let Some(n) = held.per_peer.get_mut(&self.peer) {
            *n -= 1;
            if *n == 0 {
                held.per_peer.remove(&self.peer);
            }
        }
    }
}

/// Refused connections being told why, at most (beyond: closed at once).
const REFUSING_MAX: usize = 64;

/// How long a refused connection is kept to be told why.
const REFUSING_TIME: Duration = Duration::from_secs(1);

impl Gate {
    /// Tell `conn` why it is refused and close it. The client must read
    /// the answer before it sees the connection closed (else it reports a
    /// broken pipe), so what it sends meanwhile is read and dropped, for
    /// [`REFUSING_TIME`] at most, and for [`REFUSING_MAX`] connections at
    /// once: past that, they are closed at once.
    fn refuse<L: Accept>(self: &Arc<Gate>, mut conn: L::Conn, why: &str) {
        // A fresh socket's buffer takes the answer at once.
        if L::try_write(&conn, &refusal_frames(why)).is_err()
            || self.refusing.fetch_add(1, Ordering::Relaxed) >= REFUSING_MAX
        {
            self.refusing.fetch_sub(1, Ordering::Relaxed);
            return;
        }
        let gate = Arc::clone(self);
        tokio::spawn(async move {
            let drain = async {
                let mut sink = [0u8; 1024];
                while matches!(conn.read(&mut sink).await, Ok(n) if n > 0) {}
            };
            let _ = tokio::time::timeout(REFUSING_TIME, drain).await;
            drop(conn);
            gate.refusing.fetch_sub(1, Ordering::Relaxed);
        });
    }
}

/// A listening socket whose connections are counted by peer.
pub(crate) trait Accept: Send + Sync + 'static {
    /// An accepted connection.
    type Conn: AsyncRead + AsyncWrite + Connected + Send + Unpin + 'static;
    /// Accept one connection and tell who it is from.
    fn accept_peer(&self) -> impl Future<Output = io::Result<(Self::Conn, Peer)>> + Send;
    /// Write `bytes` if the socket takes them at once.
    fn try_write(conn: &Self::Conn, bytes: &[u8]) -> io::Result<usize>;
}

impl Accept for UnixListener {
    type Conn = UnixStream;
    async fn accept_peer(&self) -> io::Result<(UnixStream, Peer)> {
        let (conn, _) = self.accept().await?;
        let peer = conn
            .peer_cred()
            .map_or(Peer::Unknown, |cred| Peer::User(cred.uid()));
        Ok((conn, peer))
    }
    fn try_write(conn: &UnixStream, bytes: &[u8]) -> io::Result<usize> {
        conn.try_write(bytes)
    }
}

impl Accept for TcpListener {
    type Conn = TcpStream;
    async fn accept_peer(&self) -> io::Result<(TcpStream, Peer)> {
        let (conn, addr) = self.accept().await?;
        Ok((conn, Peer::Source(addr.ip())))
    }
    fn try_write(conn: &TcpStream, bytes: &[u8]) -> io::Result<usize> {
        conn.try_write(bytes)
    }
}

/// How long accepting pauses after it failed (out of descriptors: the
/// connection waits in the backlog until one is free).
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);

/// The connections of `listener` that fit in `limits`, for tonic's
/// `serve_with_incoming`. Those that do not are refused (see the module
/// documentation). Accepting stops when the stream is dropped.
pub(crate) fn incoming<L: Accept>(
    listener: L,
    limits: ConnectionLimits,
) -> ReceiverStream<io::Result<Limited<L::Conn>>> {
    let gate = Arc::new(Gate {
        limits,
        held: Mutex::new(Held::default()),
        logged: AtomicU64::new(0),
        start: Instant::now(),
        refusing: AtomicUsize::new(0),
    });
    let (tx, rx) = mpsc::channel(1);
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                _ = tx.closed() => return,
                accepted = listener.accept_peer() => accepted,
            };
            let (conn, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    gate.log_refusal(&format!("cannot accept: {e}"));
                    tokio::time::sleep(ACCEPT_PAUSE).await;
                    continue;
                }
            };
            match gate.admit(peer) {
                Ok(ticket) => {
                    let conn = Limited::new(conn, ticket, limits.idle);
                    if tx.send(Ok(conn)).await.is_err() {
                        return;
                    }
                }
                Err(why) => {
                    gate.log_refusal(&why);
                    gate.refuse::<L>(conn, &why);
                }
            }
        }
    });
    ReceiverStream::new(rx)
}

/// An HTTP/2 server preface (an empty SETTINGS frame) and a GOAWAY with
/// `ENHANCE_YOUR_CALM` whose debug text is [`REFUSED`] and `why`.
fn refusal_frames(why: &str) -> Vec<u8> {
    const SETTINGS: u8 = 0x4;
    const GOAWAY: u8 = 0x7;
    const ENHANCE_YOUR_CALM: u32 = 0xb;
    let debug = format!("{REFUSED} {why}");
    let mut out = Vec::with_capacity(9 + 9 + 8 + debug.len());
    let mut frame = |kind: u8, payload: &[u8]| {
        let len = u32::try_from(payload.len()).unwrap_or(0).to_be_bytes();
        out.extend_from_slice(&len[1..]);
        out.extend_from_slice(&[kind, 0, 0, 0, 0, 0]);
        out.extend_from_slice(payload);
    };
    frame(SETTINGS, &[]);
    let mut goaway = Vec::with_capacity(8 + debug.len());
    goaway.extend_from_slice(&0u32.to_be_bytes());
    goaway.extend_from_slice(&ENHANCE_YOUR_CALM.to_be_bytes());
    goaway.extend_from_slice(debug.as_bytes());
    frame(GOAWAY, &goaway);
    out
}

/// What the server knows of one connection's use: requests in flight and
/// when the last one began or ended (what a client sends otherwise, pings
/// included, is no use).
#[derive(Debug)]
pub(crate) struct Activity {
    in_flight: AtomicUsize,
    /// Milliseconds since `start` of the last use.
    last: AtomicU64,
    start: Instant,
}

impl Activity {
    fn touch(&self) {
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last.store(ms, Ordering::Relaxed);
    }

    /// A request started; it is in flight until the value is dropped.
    pub(crate) fn begin(self: &Arc<Activity>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.touch();
        InFlight(Arc::clone(self))
    }

    /// When the connection may be closed if nothing happens until then
    /// (`None`: now).
    fn deadline(&self, idle: Duration) -> Option<Instant> {
        let now = Instant::now();
        if self.in_flight.load(Ordering::Relaxed) > 0 {
            return Some(now + idle);
        }
        let last = self.start + Duration::from_millis(self.last.load(Ordering::Relaxed));
        Some(last + idle).filter(|d| *d > now)
    }
}

/// A request in flight on a connection (see [`Activity::begin`]).
pub(crate) struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.touch();
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What tonic records in each request of a [`Limited`] connection: the
/// transport's own information and the connection's [`Activity`].
#[derive(Debug, Clone)]
pub(crate) struct ConnInfo<T> {
    pub(crate) transport: T,
    pub(crate) activity: Arc<Activity>,
}

/// An admitted connection: counted until dropped, and ended (its reads
/// see end of file) once idle for too long.
pub(crate) struct Limited<S> {
    inner: S,
    _ticket: Ticket,
    activity: Arc<Activity>,
    idle: Duration,
    timer: Pin<Box<Sleep>>,
}

impl<S> Limited<S> {
    fn new(inner: S, ticket: Ticket, idle: Duration) -> Limited<S> {
        let start = Instant::now();
        Limited {
            inner,
            _ticket: ticket,
            activity: Arc::new(Activity {
                in_flight: AtomicUsize::new(0),
                last: AtomicU64::new(0),
                start,
            }),
            idle,
            timer: Box::pin(tokio::time::sleep_until((start + idle).into())),
        }
    }

    /// Whether the connection has been idle too long (the timer is armed
    /// again otherwise, to wake this task when it may be).
    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        while self.timer.as_mut().poll(cx).is_ready() {
            match self.activity.deadline(self.idle) {
                None => return true,
                Some(at) => self.timer.as_mut().reset(at.into()),
            }
        }
        false
    }
}

impl<S: Connected> Connected for Limited<S> {
    type ConnectInfo = ConnInfo<S::ConnectInfo>;

    fn connect_info(&self) -> Self::ConnectInfo {
        ConnInfo {
            transport: self.inner.connect_info(),
            activity: Arc::clone(&self.activity),
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Limited<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        // Idle too long (whatever arrives meanwhile): end of file, and the
        // server closes it.
        if this.expired(cx) {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Limited<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gate(per_peer: usize, total: usize) -> Arc<Gate> {
        Arc::new(Gate {
            limits: ConnectionLimits {
                per_peer,
                total,
                idle: IDLE,
            },
            held: Mutex::new(Held::default()),
            logged: AtomicU64::new(0),
            start: Instant::now(),
            refusing: AtomicUsize::new(0),
        })
    }

    #[test]
    fn a_user_is_held_to_their_share_and_root_to_the_total() {
        let g = gate(2, 4);
        let a: Vec<_> = (0..2)
            .filter_map(|_| g.admit(Peer::User(1000)).ok())
            .collect();
        assert_eq!(a.len(), 2);
        let refused = g.admit(Peer::User(1000)).err().unwrap_or_default();
        assert!(refused.contains("user 1000"), "{refused}");
        assert!(g.admit(Peer::User(1001)).is_ok(), "another user is let in");
        let root: Vec<_> = (0..2).filter_map(|_| g.admit(Peer::User(0)).ok()).collect();
        assert_eq!(root.len(), 2, "root is not held to a share");
        assert!(g.admit(Peer::User(0)).is_err(), "but to the total");
        drop(a);
        assert!(g.admit(Peer::User(1000)).is_ok(), "closing frees the share");
    }

    #[test]
    fn the_refusal_is_a_goaway_naming_the_cause() {
        let frames = refusal_frames("too many");
        assert_eq!(&frames[..9], &[0, 0, 0, 4, 0, 0, 0, 0, 0]);
        assert_eq!(frames[12], 7, "a GOAWAY follows");
        assert!(frames.ends_with(format!("{REFUSED} too many").as_bytes()));
    }

    #[tokio::test]
    async fn an_idle_connection_ends_unless_a_request_is_in_flight() {
        let (a, mut b) = tokio::io::duplex(64);
        let g = gate(4, 4);
        let ticket = g.admit(Peer::User(1)).map_err(io::Error::other);
        let mut conn = Limited::new(a, ticket.expect("admitted"), Duration::from_millis(100));
        let busy = conn.activity.begin();
        let mut buf = [0u8; 8];
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let read = tokio::time::timeout(Duration::from_millis(300), conn.read(&mut buf)).await;
        assert!(read.is_err(), "kept while a request is in flight");
        drop(busy);
        let started = Instant::now();
        b.write_all(b"x").await.expect("write");
        assert_eq!(conn.read(&mut buf).await.expect("read"), 1);
        // Bytes that are no request (pings) do not keep it.
        let pinger = tokio::spawn(async move {
            for _ in 0..30 {
                if b.write_all(b"p").await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
        let ended = tokio::time::timeout(Duration::from_millis(400), async {
            loop {
                match conn.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        })
        .await;
        assert!(ended.is_ok(), "pings kept an idle connection");
        assert!(started.elapsed() >= Duration::from_millis(90));
        pinger.abort();
        drop(conn);
        assert_eq!(g.held.lock().map(|h| h.total).unwrap_or(1), 0);
    }
}
