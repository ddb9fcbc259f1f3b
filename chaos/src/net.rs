//! statenode's network seam on turmoil: a dialer for nodes and clients, and accept streams.

use hyper_util::rt::TokioIo;
use statenode::io::{Conn, Dialer, Incoming};
use std::time::Duration;
use tonic::transport::{Channel, Endpoint, Uri};

/// Dials through turmoil's simulated TCP.
pub struct SimDialer;

pub fn sim_channel(addr: &str) -> Result<Channel, String> {
    let endpoint = Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| e.to_string())?
        .connect_timeout(Duration::from_millis(500))
        // Simulated TCP drops segments on a partition instead of retransmitting them, which
        // leaves a connection silently broken: HTTP/2 pings find and replace it, as TCP
        // timeouts would on a real network.
        .http2_keep_alive_interval(Duration::from_millis(500))
        .keep_alive_timeout(Duration::from_millis(1000))
        .keep_alive_while_idle(true);
    let connector = tower::service_fn(|uri: Uri| async move {
        let host = uri.host().unwrap_or_default().to_string();
        let port = uri.port_u16().unwrap_or(80);
        let stream = turmoil::net::TcpStream::connect((host.as_str(), port)).await?;
        Ok::<_, std::io::Error>(TokioIo::new(stream))
    });
    Ok(endpoint.connect_with_connector_lazy(connector))
}

impl Dialer for SimDialer {
    fn channel(&self, addr: &str) -> Result<Channel, String> {
        sim_channel(addr)
    }
}

/// Accepted simulated connections on `port`, as a node's listener.
pub async fn incoming(port: u16) -> std::io::Result<Incoming> {
    let listener = turmoil::net::TcpListener::bind(("0.0.0.0", port)).await?;
    Ok(Box::pin(futures::stream::unfold(listener, |l| async move {
        let r = l.accept().await.map(|(s, _)| Conn::new(s));
        Some((r, l))
    })))
}
