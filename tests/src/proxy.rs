//! A loopback TCP proxy in front of a node's peer port, to cut, slow or drop its links; or in
//! front of several nodes' client ports, as a Kubernetes Service balances them.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// What the proxy does with the bytes it carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Mode {
    Pass = 0,
    /// Swallow every byte, both ways: the link looks alive but nothing arrives.
    Blackhole = 1,
    /// Hold every chunk for 60 ms.
    Delay = 2,
    /// Close connections as soon as they carry data.
    Drop = 3,
}

pub struct Proxy {
    /// Where peers dial.
    pub addr: String,
    mode: Arc<AtomicU8>,
    task: JoinHandle<()>,
}

impl Proxy {
    pub async fn start(upstream: String) -> Proxy {
        Self::balance(vec![upstream]).await
    }

    /// Each connection goes to the first of `upstreams` that accepts it.
    pub async fn balance(upstreams: Vec<String>) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("addr").to_string();
        let mode = Arc::new(AtomicU8::new(Mode::Pass as u8));
        let m = mode.clone();
        let task = tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let (m, upstreams) = (m.clone(), upstreams.clone());
                tokio::spawn(async move {
                    if let Some(outbound) = first_to_accept(&upstreams).await {
                        let (ri, wi) = inbound.into_split();
                        let (ro, wo) = outbound.into_split();
                        tokio::join!(pipe(ri, wo, m.clone()), pipe(ro, wi, m));
                    }
                });
            }
        });
        Proxy { addr, mode, task }
    }

    pub fn set(&self, mode: Mode) {
        self.mode.store(mode as u8, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn first_to_accept(upstreams: &[String]) -> Option<TcpStream> {
    for u in upstreams {
        if let Ok(Ok(s)) = tokio::time::timeout(Duration::from_secs(1), TcpStream::connect(u)).await {
            return Some(s);
        }
    }
    None
}

async fn pipe(mut from: tokio::net::tcp::OwnedReadHalf, mut to: tokio::net::tcp::OwnedWriteHalf, mode: Arc<AtomicU8>) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        match mode.load(Ordering::SeqCst) {
            m if m == Mode::Blackhole as u8 => continue,
            m if m == Mode::Drop as u8 => return,
            m if m == Mode::Delay as u8 => tokio::time::sleep(Duration::from_millis(60)).await,
            _ => {}
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
