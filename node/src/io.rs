//! The `Io` seam: how a node dials and accepts connections, reads the clock, and finds its
//! disk. `main.rs` passes real TCP, the system clock and redb; the chaos suite passes
//! turmoil's network, a simulated (skewable) clock and in-memory disks that survive crashes.

use crate::auth::CertName;
use crate::store::{LogBackend, SmDisk};
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio_stream::{Stream, StreamExt};
use tonic::transport::{Channel, Endpoint};

/// Any byte stream a server can speak over.
pub trait ConnIo: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> ConnIo for T {}

/// One accepted connection, whatever network it came from.
pub struct Conn {
    io: Box<dyn ConnIo>,
    /// Its place under a connection limit (`limit`), given back when it closes.
    _place: Option<tokio::sync::OwnedSemaphorePermit>,
    /// What the client's certificate, verified in the TLS handshake, says it is.
    cert: Option<Arc<CertName>>,
}

impl Conn {
    pub fn new(io: impl ConnIo) -> Self {
        Self { io: Box::new(io), _place: None, cert: None }
    }

    /// A connection whose client presented a verified certificate.
    pub fn with_cert(io: impl ConnIo, cert: Option<CertName>) -> Self {
        Self { cert: cert.map(Arc::new), ..Self::new(io) }
    }

    pub fn cert_name(&self) -> Option<Arc<CertName>> {
        self.cert.clone()
    }
}

impl AsyncRead for Conn {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Conn {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.io).poll_shutdown(cx)
    }
}

/// gRPC requests find their connection's client certificate name in their extensions.
impl tonic::transport::server::Connected for Conn {
    type ConnectInfo = Option<Arc<CertName>>;
    fn connect_info(&self) -> Self::ConnectInfo {
        self.cert.clone()
    }
}

/// A stream of accepted connections.
pub type Incoming = Pin<Box<dyn Stream<Item = io::Result<Conn>> + Send>>;

/// Accepted TCP connections with Nagle off: Raft and client RPCs are small and latency-bound.
pub fn tcp_incoming(l: TcpListener) -> Incoming {
    Box::pin(tokio_stream::wrappers::TcpListenerStream::new(l).map(|s| {
        let s = s?;
        s.set_nodelay(true)?;
        Ok(Conn::new(s))
    }))
}

/// At most `max` of `incoming`'s connections open at once: one beyond is closed as soon as it
/// is accepted (logged), and its place frees when an open one ends.
pub fn limit(incoming: Incoming, max: usize, door: &'static str) -> Incoming {
    let open = Arc::new(tokio::sync::Semaphore::new(max));
    Box::pin(incoming.filter_map(move |c| match c {
        Ok(conn) => match open.clone().try_acquire_owned() {
            Ok(place) => Some(Ok(Conn { _place: Some(place), ..conn })),
            Err(_) => {
                tracing::warn!(door, limit = max, "connection limit reached; closing a new connection");
                None
            }
        },
        Err(e) => Some(Err(e)),
    }))
}

pub use crate::raft::network::Dialer;

/// Real TCP.
pub struct TcpDialer;

impl Dialer for TcpDialer {
    fn channel(&self, addr: &str) -> Result<Channel, String> {
        Ok(Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| e.to_string())?
            .connect_timeout(Duration::from_secs(1))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(5))
            .keep_alive_timeout(Duration::from_secs(5))
            .connect_lazy())
    }
}

/// TCP with TLS (`--certs-dir`): the peer's certificate checked against the cluster CA and
/// the address dialed, this node's own presented.
pub struct TlsDialer(pub Arc<rustls::ClientConfig>);

impl Dialer for TlsDialer {
    fn channel(&self, addr: &str) -> Result<Channel, String> {
        statenode_client::tls::channel(&self.0, addr)
    }
}

/// Wall-clock milliseconds since the Unix epoch, as this node sees them.
pub type Clock = Arc<dyn Fn() -> u64 + Send + Sync>;

pub fn system_clock() -> Clock {
    Arc::new(|| SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64))
}

/// Storage that outlives the node process (the simulation's stand-in for a disk).
#[derive(Clone)]
pub struct Disk {
    pub log: Arc<dyn LogBackend>,
    pub sm: Arc<dyn SmDisk>,
}

/// Everything a node takes from the world around it.
#[derive(Clone)]
pub struct Io {
    pub dialer: Arc<dyn Dialer>,
    pub clock: Clock,
    /// `None`: redb files in `data_dir` (or nothing, in memory mode).
    pub disk: Option<Disk>,
}

impl Io {
    pub fn real() -> Self {
        Self { dialer: Arc::new(TcpDialer), clock: system_clock(), disk: None }
    }
}

/// A gRPC server builder (peer and client ports) that pings idle HTTP/2 connections and
/// closes those whose peer stopped answering — a vanished peer would otherwise hold its
/// connection, and a graceful stop, open until TCP gives up — and answers every call within
/// `call_timeout` (DEADLINE_EXCEEDED else; a stream's start is bounded, not its events).
pub fn grpc_server(call_timeout: Duration) -> tonic::transport::Server {
    tonic::transport::Server::builder()
        .timeout(call_timeout)
        .http2_keepalive_interval(Some(Duration::from_secs(10)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        // Streams (calls, watches) one connection may hold open at once.
        .max_concurrent_streams(Some(MAX_STREAMS_PER_CONNECTION))
}

/// HTTP/2 streams per gRPC connection (client and peer ports).
pub const MAX_STREAMS_PER_CONNECTION: u32 = 256;

/// Resolves once `stop` turns true (or its sender is gone): a server's shutdown signal.
pub async fn stopped(mut stop: tokio::sync::watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// The next accepted connection, reaping the finished tasks in `conns` meanwhile; `None` once
/// `stop` turns true or the listener ends. Failed accepts are logged and skipped.
pub async fn accept<T: 'static>(
    incoming: &mut Incoming,
    conns: &mut tokio::task::JoinSet<T>,
    stop: &mut tokio::sync::watch::Receiver<bool>,
    door: &str,
) -> Option<Conn> {
    loop {
        let next = tokio::select! {
            c = incoming.next() => c,
            _ = stop.wait_for(|s| *s) => return None,
            Some(_) = conns.join_next(), if !conns.is_empty() => continue,
        };
        match next {
            Some(Ok(c)) => return Some(c),
            Some(Err(e)) => tracing::debug!(door, error = %e, "accept failed"),
            None => return None,
        }
    }
}
