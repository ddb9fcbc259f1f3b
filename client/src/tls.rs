//! TLS with a cluster's certificates (`statenode certs`): the CA a certs directory holds
//! (`ca.crt`), and optionally a certificate of one's own for mutual TLS, read again when its
//! files change so certificates rotate without a restart. Used by clients, by `statectl`, and
//! by a node dialing its peers.

use crate::reload::{self, Reloaded};
use hyper_util::rt::TokioIo;
use rustls::client::ResolvesClientCert;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore, SignatureScheme};
use std::fmt;
use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::net::TcpStream;
use tonic::codegen::http::Uri;
use tonic::transport::{Channel, Endpoint};

/// The file names in a certs directory.
pub const CA_CERT: &str = "ca.crt";
pub const CA_KEY: &str = "ca.key";
pub const NODE_CERT: &str = "node.crt";
pub const NODE_KEY: &str = "node.key";

/// `client.NAME.crt` and `client.NAME.key`: a client's certificate and key.
pub fn client_files(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    (dir.join(format!("client.{name}.crt")), dir.join(format!("client.{name}.key")))
}

/// The one crypto provider every TLS config here uses.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn bad(path: &Path, what: impl fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("{}: {what}", path.display()))
}

/// Every certificate in a PEM file (at least one).
pub fn read_certs(path: &Path) -> io::Result<Vec<CertificateDer<'static>>> {
    let bytes = std::fs::read(path).map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
    let certs = CertificateDer::pem_slice_iter(&bytes).collect::<Result<Vec<_>, _>>().map_err(|e| bad(path, e))?;
    if certs.is_empty() {
        return Err(bad(path, "no certificate in it"));
    }
    Ok(certs)
}

/// The private key in a PEM file.
pub fn read_key(path: &Path) -> io::Result<PrivateKeyDer<'static>> {
    let bytes = std::fs::read(path).map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| bad(path, e))
}

/// The CA certificates of `dir/ca.crt`, as trust roots.
pub fn roots(dir: &Path) -> io::Result<RootCertStore> {
    let path = dir.join(CA_CERT);
    let mut roots = RootCertStore::empty();
    for cert in read_certs(&path)? {
        roots.add(cert).map_err(|e| bad(&path, e))?;
    }
    Ok(roots)
}

/// A certificate and its key from two files, read again once either file changes
/// (`reload::Reloaded`: looked at no more than once a second, at a handshake; a change that
/// does not load keeps the previous pair).
#[derive(Debug)]
pub struct Reloading(Reloaded<Arc<CertifiedKey>>);

fn certified(cert: &Path, key: &Path) -> io::Result<Arc<CertifiedKey>> {
    let chain = read_certs(cert)?;
    let signer = provider().key_provider.load_private_key(read_key(key)?).map_err(|e| bad(key, e))?;
    let ck = CertifiedKey::new(chain, signer);
    ck.keys_match().map_err(|e| bad(key, format!("does not match {}: {e}", cert.display())))?;
    Ok(Arc::new(ck))
}

impl Reloading {
    pub fn load(cert: PathBuf, key: PathBuf) -> io::Result<Arc<Self>> {
        let paths = vec![cert.clone(), key.clone()];
        let pair = Reloaded::new("certificate", paths, reload::RECHECK, move || certified(&cert, &key))?;
        Ok(Arc::new(Self(pair)))
    }

    /// The pair to present now.
    pub fn current(&self) -> Arc<CertifiedKey> {
        self.0.current()
    }
}

impl ResolvesServerCert for Reloading {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

impl ResolvesClientCert for Reloading {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// A client config trusting `dir/ca.crt`, presenting `identity` (certificate, key) when
/// given, speaking HTTP/2 (gRPC).
pub fn client_config(dir: &Path, identity: Option<(PathBuf, PathBuf)>) -> io::Result<Arc<ClientConfig>> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(io::Error::other)?
        .with_root_certificates(roots(dir)?);
    let mut config = match identity {
        Some((cert, key)) => builder.with_client_cert_resolver(Reloading::load(cert, key)?),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// Dials `host:port` and completes a TLS handshake, checking the server's certificate
/// against the CA and the host name (or IP address) dialed.
#[derive(Clone)]
pub struct Connector(pub Arc<ClientConfig>);

impl tower::Service<Uri> for Connector {
    type Response = TokioIo<tokio_rustls::client::TlsStream<TcpStream>>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let config = self.0.clone();
        Box::pin(async move {
            let host = uri.host().ok_or_else(|| io::Error::other(format!("{uri}: no host")))?;
            let host = host.trim_start_matches('[').trim_end_matches(']').to_string();
            let port = uri.port_u16().ok_or_else(|| io::Error::other(format!("{uri}: no port")))?;
            let tcp = TcpStream::connect((host.as_str(), port)).await?;
            tcp.set_nodelay(true)?;
            let name = ServerName::try_from(host).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
            let tls = tokio_rustls::TlsConnector::from(config).connect(name, tcp).await?;
            Ok(TokioIo::new(tls))
        })
    }
}

/// A lazily-connecting gRPC channel to `addr` over TLS.
pub fn channel(config: &Arc<ClientConfig>, addr: &str) -> Result<Channel, String> {
    let addr = addr.strip_prefix("https://").unwrap_or(addr);
    // The scheme only names the requests' :scheme; the connector does the TLS.
    Ok(Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| format!("{addr}: {e}"))?
        .connect_timeout(Duration::from_secs(2))
        .http2_keep_alive_interval(Duration::from_secs(5))
        .keep_alive_timeout(Duration::from_secs(5))
        .connect_with_connector_lazy(Connector(config.clone())))
}
