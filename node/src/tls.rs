//! TLS on a node's listeners (`--certs-dir`), and the certificates for it
//! (`statenode certs`, CockroachDB's model).
//!
//! A certs directory holds the cluster CA's certificate (`ca.crt`), a node's certificate
//! and key (`node.crt`, `node.key`: server and client use, its host names and addresses as
//! subject alternative names), and client certificates (`client.NAME.crt`/`.key`). The CA's
//! key (`ca.key`) belongs on the machine that makes certificates, not on the nodes.
//!
//! The peer port requires a certificate signed by the CA (mutual TLS): a plaintext peer or
//! one from another CA fails the handshake. The client ports (gRPC, HTTP, MQTT) accept a
//! client certificate signed by the CA, and clients without one. The node's certificate is
//! read again when its files change (`statenode_client::tls::Reloading`).

use crate::auth::CertName;
use crate::io::{Conn, Incoming};
use anyhow::Context;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SerialNumber,
};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, DigitallySignedStruct, DistinguishedName as Subject, ServerConfig, SignatureScheme};
use statenode_client::reload::{self, Reloaded};
use statenode_client::tls::{self as ctls, Reloading, CA_CERT, CA_KEY, NODE_CERT, NODE_KEY};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio_rustls::TlsAcceptor;
use tokio_stream::StreamExt;

/// A node's TLS: an acceptor for each port (each offers its own protocol in ALPN), the
/// config to dial peers.
#[derive(Clone)]
pub struct NodeTls {
    pub peer: TlsAcceptor,
    pub grpc: TlsAcceptor,
    pub http: TlsAcceptor,
    pub mqtt: TlsAcceptor,
    pub dial: Arc<ClientConfig>,
}

impl NodeTls {
    /// Loads `dir`: `ca.crt`, `node.crt`, `node.key`.
    pub fn load(dir: &Path) -> anyhow::Result<Self> {
        Self::load_with(dir, reload::RECHECK)
    }

    /// `load`, looking at `ca.crt` again no more than once per `recheck`.
    fn load_with(dir: &Path, recheck: Duration) -> anyhow::Result<Self> {
        let trust = Trust::load(dir, recheck)?;
        let node = Reloading::load(dir.join(NODE_CERT), dir.join(NODE_KEY))?;
        let server = |verifier: Arc<dyn ClientCertVerifier>, alpn: &[&[u8]]| {
            let mut c = ServerConfig::builder_with_provider(ctls::provider())
                .with_safe_default_protocol_versions()?
                .with_client_cert_verifier(verifier)
                .with_cert_resolver(node.clone());
            c.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
            anyhow::Ok(TlsAcceptor::from(Arc::new(c)))
        };
        let peers = Arc::new(ByCa { trust: trust.clone(), nodes_only: true });
        let clients = Arc::new(ByCa { trust: trust.clone(), nodes_only: false });
        let mut dial = ClientConfig::builder_with_provider(ctls::provider())
            .with_safe_default_protocol_versions()?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(ByCa { trust, nodes_only: true }))
            .with_client_cert_resolver(node.clone());
        dial.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Self {
            peer: server(peers, &[b"h2"])?,
            grpc: server(clients.clone(), &[b"h2"])?,
            http: server(clients.clone(), &[b"http/1.1"])?,
            // MQTT clients rarely offer ALPN (and name it variously): none is asked.
            mqtt: server(clients, &[])?,
            dial: Arc::new(dial),
        })
    }
}

/// A name every node certificate holds besides its own hosts: what a peer must prove.
pub const NODE_NAME: &str = "node.statenode";

/// The cluster CA as verifiers, built again when `ca.crt` changes, so a CA rotates without a
/// restart: put the new CA beside the old in `ca.crt`, move every certificate to the new one,
/// then drop the old (docs/security.md).
#[derive(Debug)]
struct Trust {
    verifiers: Reloaded<Arc<Verifiers>>,
    /// The CA names a server asks client certificates of (as first loaded: a new CA made by
    /// `statenode certs` has the same name).
    hints: Vec<Subject>,
    /// How handshake signatures are checked (the crypto provider's, whatever the CA).
    algorithms: rustls::crypto::WebPkiSupportedAlgorithms,
}

#[derive(Debug)]
struct Verifiers {
    /// A certificate of the CA, as a client's.
    client: Arc<dyn ClientCertVerifier>,
    /// A certificate of the CA, as a server's for the name dialed.
    server: Arc<WebPkiServerVerifier>,
}

impl Trust {
    fn load(dir: &Path, recheck: Duration) -> std::io::Result<Arc<Self>> {
        let owned = dir.to_path_buf();
        let load = move || {
            let roots = Arc::new(ctls::roots(&owned)?);
            let client = WebPkiClientVerifier::builder_with_provider(roots.clone(), ctls::provider())
                .allow_unauthenticated()
                .build()
                .map_err(std::io::Error::other)?;
            let server = WebPkiServerVerifier::builder_with_provider(roots, ctls::provider())
                .build()
                .map_err(std::io::Error::other)?;
            Ok(Arc::new(Verifiers { client, server }))
        };
        let verifiers = Reloaded::new("CA certificate", vec![dir.join(CA_CERT)], recheck, load)?;
        let hints = verifiers.current().client.root_hint_subjects().to_vec();
        let algorithms = ctls::provider().signature_verification_algorithms;
        Ok(Arc::new(Self { verifiers, hints, algorithms }))
    }

    fn now(&self) -> Arc<Verifiers> {
        self.verifiers.current()
    }
}

/// Checks a certificate against the cluster CA as it is now. As a client verifier: on the
/// client ports a client certificate is optional; with `nodes_only` (the peer port) it is
/// required and must also be a server certificate for `NODE_NAME` — a node's, never a client
/// certificate of the same CA. As a server verifier: what a node dials (a node's certificate
/// for the address dialed).
#[derive(Debug)]
struct ByCa {
    trust: Arc<Trust>,
    nodes_only: bool,
}

impl ClientCertVerifier for ByCa {
    fn client_auth_mandatory(&self) -> bool {
        self.nodes_only
    }

    fn root_hint_subjects(&self) -> &[Subject] {
        &self.trust.hints
    }

    fn verify_client_cert(
        &self,
        leaf: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let v = self.trust.now();
        v.client.verify_client_cert(leaf, intermediates, now)?;
        if self.nodes_only {
            let name = ServerName::try_from(NODE_NAME).expect("a DNS name");
            v.server.verify_server_cert(leaf, intermediates, &name, &[], now)?;
        }
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.trust.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.trust.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.trust.algorithms.supported_schemes()
    }
}

impl ServerCertVerifier for ByCa {
    fn verify_server_cert(
        &self,
        leaf: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.trust.now().server.verify_server_cert(leaf, intermediates, name, ocsp, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.trust.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.trust.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.trust.algorithms.supported_schemes()
    }
}

/// How long a client may take over its handshake.
const HANDSHAKE: Duration = Duration::from_secs(10);
/// Handshakes done and not yet taken by the server.
const READY: usize = 64;

/// The connections of `incoming` after a TLS handshake each (in their own tasks: a slow or
/// silent client holds up nobody). A failed handshake is logged and dropped. At most
/// `max_pending` handshakes at once: a connection beyond is closed at once (a flood of silent
/// connections would otherwise hold a socket and a task each for the handshake timeout).
pub fn wrap(mut incoming: Incoming, acceptor: TlsAcceptor, door: &'static str, max_pending: usize) -> Incoming {
    let pending = Arc::new(tokio::sync::Semaphore::new(max_pending));
    let (tx, rx) = tokio::sync::mpsc::channel(READY);
    tokio::spawn(async move {
        loop {
            let conn = tokio::select! {
                c = incoming.next() => c,
                // The server stopped taking connections: let go of the listener.
                _ = tx.closed() => return,
            };
            let conn = match conn {
                Some(Ok(c)) => c,
                Some(Err(e)) => {
                    let _ = tx.send(Err(e)).await;
                    continue;
                }
                None => return,
            };
            let Ok(permit) = pending.clone().try_acquire_owned() else {
                tracing::warn!(door, limit = max_pending, "too many TLS handshakes at once; closing a new connection");
                continue;
            };
            let (acceptor, tx) = (acceptor.clone(), tx.clone());
            tokio::spawn(async move {
                let _permit = permit;
                match tokio::time::timeout(HANDSHAKE, acceptor.accept(conn)).await {
                    Ok(Ok(tls)) => {
                        let cert = tls.get_ref().1.peer_certificates().and_then(|c| c.first()).and_then(cert_name);
                        drop(tx.send(Ok(Conn::with_cert(tls, cert))).await)
                    }
                    Ok(Err(e)) => tracing::debug!(door, error = %e, "TLS handshake failed"),
                    Err(_) => tracing::debug!(door, "TLS handshake timed out"),
                }
            });
        }
    });
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
}

/// What a client certificate the handshake verified says its holder is: a node (it is a
/// server certificate for `NODE_NAME`), else its subject's common name. `None` for a
/// certificate that cannot be read or has no usable common name.
pub fn cert_name(der: &CertificateDer<'_>) -> Option<CertName> {
    let cert = webpki::EndEntityCert::try_from(der).ok()?;
    let node = ServerName::try_from(NODE_NAME).expect("a DNS name");
    if cert.verify_is_valid_for_subject_name(&node).is_ok() {
        return Some(CertName::Node);
    }
    common_name(cert.subject()).map(CertName::Client)
}

/// The longest name a client certificate may give (a principal's name).
const MAX_NAME: usize = 256;

/// The first common name (OID 2.5.4.3) of an X.501 `Name`'s DER contents (a sequence of
/// relative distinguished names, each a set of type-and-value sequences), when it is a
/// UTF-8, printable or IA5 string of visible characters.
pub fn common_name(mut name: &[u8]) -> Option<String> {
    const SET: u8 = 0x31;
    const SEQUENCE: u8 = 0x30;
    const OID: u8 = 0x06;
    const CN: &[u8] = &[0x55, 0x04, 0x03];
    while !name.is_empty() {
        let (set, rest) = der(name, SET)?;
        name = rest;
        let mut set = set;
        while !set.is_empty() {
            let (pair, rest) = der(set, SEQUENCE)?;
            set = rest;
            let (oid, value) = der(pair, OID)?;
            if oid != CN {
                continue;
            }
            let (&tag, _) = value.split_first()?;
            let (text, _) = der(value, tag).filter(|_| matches!(tag, 0x0c | 0x13 | 0x16))?;
            let text = std::str::from_utf8(text).ok()?;
            let usable = !text.is_empty() && text.len() <= MAX_NAME && !text.chars().any(char::is_control);
            return usable.then(|| text.to_string());
        }
    }
    None
}

/// One DER element with tag `want`: its contents and what follows it.
fn der(b: &[u8], want: u8) -> Option<(&[u8], &[u8])> {
    let (&tag, rest) = b.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (first as usize, rest)
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        (rest[..n].iter().fold(0usize, |len, &b| len << 8 | b as usize), &rest[n..])
    };
    (tag == want && rest.len() >= len).then(|| rest.split_at(len))
}

/// A certificate's validity, from now.
fn valid_for(params: &mut CertificateParams, days: i64) {
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(days);
    params.serial_number = Some(SerialNumber::from_slice(&rand::random::<[u8; 16]>()));
}

/// The CA's parameters: the same every time, so a CA made earlier signs with them.
fn ca_params() -> CertificateParams {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "statenode");
    dn.push(DnType::CommonName, "statenode CA");
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    p
}

/// Writes `contents` to `path`, readable by its owner only when `private`; refuses to replace
/// a file unless `overwrite`.
fn write_file(path: &Path, contents: &str, private: bool, overwrite: bool) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).mode(if private { 0o600 } else { 0o644 });
    if overwrite {
        opts.create(true).truncate(true);
    } else {
        opts.create_new(true);
    }
    let mut f = opts.open(path).with_context(|| {
        if path.exists() && !overwrite {
            format!("{} exists (--overwrite replaces it)", path.display())
        } else {
            format!("create {}", path.display())
        }
    })?;
    f.write_all(contents.as_bytes()).with_context(|| format!("write {}", path.display()))?;
    f.sync_all()?;
    Ok(())
}

/// `statenode certs create-ca`: a new CA, `ca.crt` and `ca.key` in `dir` (10 years).
pub fn create_ca(dir: &Path, overwrite: bool) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    let key = KeyPair::generate()?;
    let mut params = ca_params();
    valid_for(&mut params, 3650);
    let cert = params.self_signed(&key)?;
    write_file(&dir.join(CA_KEY), &key.serialize_pem(), true, overwrite)?;
    write_file(&dir.join(CA_CERT), &cert.pem(), false, overwrite)?;
    Ok(dir.join(CA_CERT))
}

/// Signs a new key's certificate with the CA in `dir`; returns (certificate, key) PEM.
fn issue(dir: &Path, mut params: CertificateParams, days: i64) -> anyhow::Result<(String, String)> {
    let ca_key_path = dir.join(CA_KEY);
    let ca_key = std::fs::read_to_string(&ca_key_path)
        .with_context(|| format!("read {} (make the CA first: statenode certs create-ca)", ca_key_path.display()))?;
    let ca_key = KeyPair::from_pem(&ca_key).with_context(|| format!("{}: not a private key", ca_key_path.display()))?;
    // The CA certificate must be the one made with this key (`ca_params` gives its name).
    let ca_cert = ctls::read_certs(&dir.join(CA_CERT))?;
    let issuer = Issuer::new(ca_params(), ca_key);
    let key = KeyPair::generate()?;
    valid_for(&mut params, days);
    let cert = params.signed_by(&key, &issuer)?;
    verify_chain(cert.der(), &ca_cert[0]).context("the new certificate does not verify against ca.crt")?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// Checks `leaf` against `ca` as a client certificate would be checked (catches a `ca.crt`
/// that does not belong to `ca.key`).
fn verify_chain(leaf: &[u8], ca: &CertificateDer<'static>) -> anyhow::Result<()> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.clone())?;
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), ctls::provider()).build()?;
    verifier.verify_client_cert(&CertificateDer::from(leaf.to_vec()), &[], UnixTime::now())?;
    Ok(())
}

/// `statenode certs create-node HOST...`: `node.crt`/`node.key` for a node reached at these
/// host names and IP addresses (server and client use: nodes dial each other with it).
pub fn create_node(dir: &Path, hosts: &[String], overwrite: bool) -> anyhow::Result<PathBuf> {
    anyhow::ensure!(!hosts.is_empty(), "name at least one host name or IP address the node is reached at");
    for h in hosts {
        // A DNS name or IP address as a client would dial it; a wildcard covers one label.
        let name = h.strip_prefix("*.").unwrap_or(h);
        anyhow::ensure!(
            rustls::pki_types::ServerName::try_from(name).is_ok(),
            "{h:?} is not a host name or IP address"
        );
    }
    let mut names = hosts.to_vec();
    names.push(NODE_NAME.into());
    let mut params = CertificateParams::new(names).context("a host name or address")?;
    params.distinguished_name.push(DnType::OrganizationName, "statenode");
    params.distinguished_name.push(DnType::CommonName, "node");
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    let (cert, key) = issue(dir, params, 1825)?;
    write_file(&dir.join(NODE_KEY), &key, true, overwrite)?;
    write_file(&dir.join(NODE_CERT), &cert, false, overwrite)?;
    Ok(dir.join(NODE_CERT))
}

/// `statenode certs create-client NAME`: `client.NAME.crt`/`.key`, the principal NAME.
pub fn create_client(dir: &Path, name: &str, overwrite: bool) -> anyhow::Result<PathBuf> {
    let ok =
        !name.is_empty() && name.len() <= 64 && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    anyhow::ensure!(ok, "a client name is 1 to 64 of A-Z a-z 0-9 - _ .");
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::OrganizationName, "statenode");
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let (cert, key) = issue(dir, params, 1825)?;
    let (cert_path, key_path) = ctls::client_files(dir, name);
    write_file(&key_path, &key, true, overwrite)?;
    write_file(&cert_path, &cert, false, overwrite)?;
    Ok(cert_path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificates_made_here_load_and_verify() {
        let dir = tempfile::tempdir().unwrap();
        create_ca(dir.path(), false).unwrap();
        create_node(dir.path(), &["localhost".into(), "127.0.0.1".into()], false).unwrap();
        create_client(dir.path(), "alice", false).unwrap();
        NodeTls::load(dir.path()).unwrap();
        // Nothing is replaced without --overwrite; a bad name or no host is refused.
        let e = create_ca(dir.path(), false).unwrap_err();
        assert!(format!("{e:#}").contains("--overwrite"), "{e:#}");
        assert!(create_node(dir.path(), &[], true).is_err());
        assert!(create_client(dir.path(), "../x", true).is_err());
        assert!(create_node(dir.path(), &["not a host".into()], true).is_err());
    }

    #[test]
    fn the_peer_port_takes_node_certificates_only() {
        let dir = tempfile::tempdir().unwrap();
        create_ca(dir.path(), false).unwrap();
        create_node(dir.path(), &["127.0.0.1".into()], false).unwrap();
        create_client(dir.path(), "alice", false).unwrap();
        let peers = ByCa { trust: Trust::load(dir.path(), reload::RECHECK).unwrap(), nodes_only: true };
        let now = UnixTime::now();
        let node = ctls::read_certs(&dir.path().join(NODE_CERT)).unwrap();
        peers.verify_client_cert(&node[0], &[], now).expect("a node's certificate");
        let alice = ctls::read_certs(&ctls::client_files(dir.path(), "alice").0).unwrap();
        peers.verify_client_cert(&alice[0], &[], now).expect_err("a client's certificate of the same CA");
    }

    #[test]
    fn a_certificate_of_another_ca_does_not_verify() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        create_ca(a.path(), false).unwrap();
        create_ca(b.path(), false).unwrap();
        create_client(b.path(), "mallory", false).unwrap();
        let foreign = ctls::read_certs(&ctls::client_files(b.path(), "mallory").0).unwrap();
        let ca = ctls::read_certs(&a.path().join(CA_CERT)).unwrap();
        assert!(verify_chain(&foreign[0], &ca[0]).is_err());
        // A ca.crt that does not belong to ca.key: issuing refuses.
        std::fs::copy(b.path().join(CA_CERT), a.path().join(CA_CERT)).unwrap();
        assert!(create_client(a.path(), "bob", false).is_err());
    }

    #[test]
    fn names_of_certificates() {
        let dir = tempfile::tempdir().unwrap();
        create_ca(dir.path(), false).unwrap();
        create_node(dir.path(), &["127.0.0.1".into()], false).unwrap();
        create_client(dir.path(), "alice", false).unwrap();
        let node = ctls::read_certs(&dir.path().join(NODE_CERT)).unwrap();
        assert_eq!(cert_name(&node[0]), Some(CertName::Node));
        let alice = ctls::read_certs(&ctls::client_files(dir.path(), "alice").0).unwrap();
        assert_eq!(cert_name(&alice[0]), Some(CertName::Client("alice".into())));
        assert_eq!(cert_name(&CertificateDer::from(vec![0x30, 0x03, 1, 2, 3])), None);
    }

    #[test]
    fn common_names_from_hostile_der() {
        // SET { SEQUENCE { OID 2.5.4.3, UTF8String "bob" } }
        let name = [0x31, 0x0c, 0x30, 0x0a, 0x06, 0x03, 0x55, 0x04, 0x03, 0x0c, 0x03, b'b', b'o', b'b'];
        assert_eq!(common_name(&name).as_deref(), Some("bob"));
        // Every truncation fails cleanly.
        for cut in 0..name.len() {
            assert_eq!(common_name(&name[..cut]), None, "cut at {cut}");
        }
        let mut wrong_type = name;
        wrong_type[9] = 0x04; // an OCTET STRING
        assert_eq!(common_name(&wrong_type), None);
        let mut control = name;
        control[12] = b'\n';
        assert_eq!(common_name(&control), None, "a control character");
        // A length that claims more than there is, and long-form lengths.
        assert_eq!(common_name(&[0x31, 0x84, 0xff, 0xff, 0xff, 0xff]), None);
        assert_eq!(common_name(&[0x31, 0x80]), None);
        let long = [0x31, 0x81, 0x0c, 0x30, 0x0a, 0x06, 0x03, 0x55, 0x04, 0x03, 0x13, 0x03, b'e', b'v', b'e'];
        assert_eq!(common_name(&long).as_deref(), Some("eve"));
    }

    #[test]
    fn a_new_ca_beside_the_old_is_trusted_without_a_restart() {
        let (old, new) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        for (dir, client) in [(old.path(), "alice"), (new.path(), "bob")] {
            create_ca(dir, false).unwrap();
            create_node(dir, &["127.0.0.1".into()], false).unwrap();
            create_client(dir, client, false).unwrap();
        }
        let trust = Trust::load(old.path(), Duration::ZERO).unwrap();
        let (clients, peers) = (ByCa { trust: trust.clone(), nodes_only: false }, ByCa { trust, nodes_only: true });
        let cert = |dir: &Path, file: PathBuf| ctls::read_certs(&dir.join(file)).unwrap().remove(0);
        let alice = cert(old.path(), ctls::client_files(old.path(), "alice").0);
        let bob = cert(new.path(), ctls::client_files(new.path(), "bob").0);
        let new_node = cert(new.path(), NODE_CERT.into());
        let now = UnixTime::now();
        let ok = |v: &ByCa, c: &CertificateDer<'static>| v.verify_client_cert(c, &[], now).is_ok();
        assert!(ok(&clients, &alice) && !ok(&clients, &bob) && !ok(&peers, &new_node));
        // Both CAs in ca.crt: both trusted, at the next handshake.
        let pem = |dir: &Path| std::fs::read_to_string(dir.join(CA_CERT)).unwrap();
        let both = format!("{}{}", pem(new.path()), pem(old.path()));
        std::fs::write(old.path().join(CA_CERT), both).unwrap();
        bump_mtime(&old.path().join(CA_CERT));
        assert!(ok(&clients, &alice) && ok(&clients, &bob) && ok(&peers, &new_node));
        let name = ServerName::try_from("127.0.0.1").unwrap();
        assert!(peers.verify_server_cert(&new_node, &[], &name, &[], now).is_ok(), "dialing a moved node");
        // The old CA dropped: its certificates no longer.
        std::fs::copy(new.path().join(CA_CERT), old.path().join(CA_CERT)).unwrap();
        bump_mtime(&old.path().join(CA_CERT));
        assert!(!ok(&clients, &alice) && ok(&clients, &bob));
        // A ca.crt that does not parse keeps the CAs before it.
        std::fs::write(old.path().join(CA_CERT), "garbage").unwrap();
        bump_mtime(&old.path().join(CA_CERT));
        assert!(ok(&clients, &bob));
    }

    /// A modification time no file system rounds away, later at each call.
    fn bump_mtime(path: &Path) {
        static CALLS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let n = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let f = std::fs::File::options().write(true).open(path).unwrap();
        f.set_modified(std::time::SystemTime::now() + Duration::from_secs(10 * n)).unwrap();
    }
}
