//! TLS from outside (issue 13): certificates made with `statenode certs`, a three-node
//! cluster with `--certs-dir`, every door over TLS (the Rust client, statectl, curl, paho),
//! plaintext refused everywhere, and a peer port that takes node certificates of its own CA
//! only; a node certificate replaced on disk is served without a restart.

use statenode::raft::network::encode;
use statenode::raft::peer::PeerRequest;
use statenode_client::tls::{self as ctls, NODE_CERT};
use statenode_client::{v1 as pb, Options};
use statenode_e2e::{bin, serial, TestCluster};
use statenode_proto::v1::peer_client::PeerClient;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::Duration;

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().expect("run");
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A CA, a node certificate for loopback, and a client certificate `alice`, in `dir`.
fn make_certs(dir: &Path) {
    let certs = |args: &[&str]| {
        run(Command::new(bin("statenode")).arg("certs").args(args).args(["--certs-dir", dir.to_str().unwrap()]));
    };
    certs(&["create-ca"]);
    certs(&["create-node", "localhost", "127.0.0.1"]);
    certs(&["create-client", "alice"]);
}

/// A three-node cluster on certificates made in `dir/certs`; returns it and that directory.
async fn tls_cluster(dir: &Path) -> (TestCluster, PathBuf) {
    let certs = dir.join("certs");
    make_certs(&certs);
    let c = TestCluster::start_with_args(3, false, &["--certs-dir", certs.to_str().unwrap()]).await;
    (c, certs)
}

/// A request refused for its caller's rules.
#[track_caller]
fn denied<T: std::fmt::Debug>(r: Result<T, statenode_client::Error>) {
    let code = r.expect_err("refused").code();
    assert_eq!(code, Some(tonic::Code::PermissionDenied));
}

/// A peer RPC (`Forward` of a status request) to `addr` over `channel`.
async fn peer_status(channel: tonic::transport::Channel) -> Result<(), tonic::Status> {
    let mut peer = PeerClient::new(channel);
    tokio::time::timeout(Duration::from_secs(5), peer.forward(encode(&PeerRequest::Status)))
        .await
        .map_err(|_| tonic::Status::deadline_exceeded("no answer"))?
        .map(drop)
}

fn tls_channel(config: Arc<rustls::ClientConfig>, addr: &str) -> tonic::transport::Channel {
    ctls::channel(&config, addr).expect("channel")
}

fn curl(args: &[&str]) -> Output {
    Command::new("curl").args(["-sS", "--max-time", "5"]).args(args).output().expect("curl")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_cluster_serves_every_door_and_refuses_strangers() {
    let _g = serial().await;
    let dir = tempfile::tempdir().unwrap();
    let (c, certs) = tls_cluster(dir.path()).await;
    let certs_arg = certs.to_str().unwrap();
    let foreign = dir.path().join("foreign");
    make_certs(&foreign);

    // The Rust client over TLS.
    let client = c.client();
    client.put_simple("k", "v").await.expect("put over TLS");
    let got = client.get("k", pb::Consistency::Linearizable).await.unwrap().expect("k");
    assert_eq!(got.value, "v".as_bytes());
    // A plaintext client gets nothing from a TLS port.
    let plain = statenode_client::Client::new(
        &[&c.nodes[0].grpc],
        Options { deadline: Duration::from_secs(2), attempt_timeout: Duration::from_secs(1), ..Options::default() },
    )
    .unwrap();
    assert!(plain.get("k", pb::Consistency::Stale).await.is_err(), "plaintext gRPC answered");

    // statectl with --certs-dir; without it, an error.
    let grpc = c.nodes[1].grpc.clone();
    let out = run(Command::new(bin("statectl")).args(["--endpoints", &grpc, "--certs-dir", certs_arg, "get", "k"]));
    assert!(String::from_utf8_lossy(&out.stdout).contains('v'), "{out:?}");
    let out = Command::new(bin("statectl")).args(["--endpoints", &grpc, "get", "k"]).output().unwrap();
    assert!(!out.status.success(), "statectl without TLS succeeded: {out:?}");

    // curl over HTTPS, the native API and Dapr's; plain HTTP refused; the health probe.
    let http = c.nodes[2].http.clone();
    let ca = certs.join(ctls::CA_CERT);
    let ca = ca.to_str().unwrap();
    let url = |path: &str| format!("https://{http}{path}");
    let out = curl(&["--cacert", ca, "-X", "PUT", "--data", "from-curl", &url("/v1/kv/curl")]);
    assert!(out.status.success(), "{out:?}");
    let out = curl(&["--cacert", ca, &url("/v1.0/state/statestore/curl")]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "from-curl", "{out:?}");
    let out = curl(&[&format!("http://{http}/v1/kv/curl")]);
    assert!(!out.status.success() || !String::from_utf8_lossy(&out.stdout).contains("from-curl"), "{out:?}");
    let out = curl(&["--cacert", foreign.join(ctls::CA_CERT).to_str().unwrap(), &url("/livez")]);
    assert!(!out.status.success(), "curl trusting another CA accepted the node: {out:?}");
    run(Command::new(bin("statenode")).args(["health", "--http", &http, "--certs-dir", certs_arg]));

    // The peer port: nodes of this CA only.
    let node_identity = Some((certs.join(NODE_CERT), certs.join(ctls::NODE_KEY)));
    let member = ctls::client_config(&certs, node_identity).unwrap();
    let anonymous = ctls::client_config(&certs, None).unwrap();
    let client_cert = ctls::client_config(&certs, Some(ctls::client_files(&certs, "alice"))).unwrap();
    let stranger = {
        // A node certificate of another CA, trusting ours for the server's side.
        let mut roots = ctls::roots(&certs).unwrap();
        roots.add(ctls::read_certs(&foreign.join(ctls::CA_CERT)).unwrap().remove(0)).unwrap();
        let own = ctls::Reloading::load(foreign.join(NODE_CERT), foreign.join(ctls::NODE_KEY)).unwrap();
        let mut cfg = rustls::ClientConfig::builder_with_provider(ctls::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_client_cert_resolver(own);
        cfg.alpn_protocols = vec![b"h2".to_vec()];
        Arc::new(cfg)
    };
    for n in &c.nodes {
        let peer = n.peer.clone();
        peer_status(tls_channel(member.clone(), &peer)).await.expect("a member's certificate is let in");
        let plain = tonic::transport::Endpoint::from_shared(format!("http://{peer}")).unwrap().connect_lazy();
        assert!(peer_status(plain).await.is_err(), "node {}: plaintext peer RPC answered", n.id);
        assert!(peer_status(tls_channel(anonymous.clone(), &peer)).await.is_err(), "no client certificate");
        let e = peer_status(tls_channel(client_cert.clone(), &peer)).await;
        assert!(e.is_err(), "node {}: a client certificate reached the peer port", n.id);
        let e = peer_status(tls_channel(stranger.clone(), &peer)).await;
        assert!(e.is_err(), "node {}: another CA's node reached the peer port", n.id);
    }

    // MQTT over TLS with paho; plaintext to the same port gets no CONNACK.
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("py/mqtt_tls.py");
    let out = Command::new("python3").arg(script).args([&c.nodes[0].mqtt, ca]).output().expect("python3");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("all MQTT TLS checks passed"),
        "{stdout}\n{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        c.nodes[0].log_tail()
    );

    // The Dapr Python SDK over TLS, unmodified: https endpoints, the CA through the
    // variables gRPC and Python's ssl read.
    let n = &c.nodes[1];
    let out = Command::new("python3")
        .arg(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("py/sdk_minimal.py"))
        .env("DAPR_GRPC_ENDPOINT", format!("https://{}", n.grpc))
        .env("DAPR_HTTP_ENDPOINT", format!("https://{}", n.http))
        .env("GRPC_DEFAULT_SSL_ROOTS_FILE_PATH", ca)
        .env("SSL_CERT_FILE", ca)
        .env("DAPR_HEALTH_TIMEOUT", "30")
        .env_remove("DAPR_API_TOKEN")
        .output()
        .expect("python3");
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("ok"),
        "the Dapr SDK over TLS: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // The cluster still works after all that.
    client.put_simple("k", "w").await.expect("put after the strangers");
}

/// The served certificate, as a client sees it in the handshake.
async fn served_cert(addr: &str, certs: &Path) -> Vec<u8> {
    let mut config = Arc::unwrap_or_clone(ctls::client_config(certs, None).unwrap());
    config.alpn_protocols.clear();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp).await.expect("handshake");
    tls.get_ref().1.peer_certificates().expect("a certificate")[0].to_vec()
}

/// `create-node --overwrite` while the cluster runs: new handshakes get the new certificate
/// (no restart), and the cluster keeps working with it. Then the CA rotates the same way
/// (docs/security.md): both CAs in `ca.crt`, certificates from the new one, the old CA
/// dropped — a client of the old CA is refused, a restarted node rejoins under the new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_and_the_ca_rotate_without_a_restart() {
    let _g = serial().await;
    let dir = tempfile::tempdir().unwrap();
    let (mut c, certs) = tls_cluster(dir.path()).await;
    let http = c.nodes[0].http.clone();
    let before = served_cert(&http, &certs).await;
    assert_eq!(before, ctls::read_certs(&certs.join(NODE_CERT)).unwrap()[0].to_vec());
    run(Command::new(bin("statenode"))
        .args(["certs", "create-node", "--overwrite", "--certs-dir"])
        .arg(&certs)
        .args(["localhost", "127.0.0.1"]));
    let now = ctls::read_certs(&certs.join(NODE_CERT)).unwrap()[0].to_vec();
    assert_ne!(before, now);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while served_cert(&http, &certs).await != now {
        assert!(std::time::Instant::now() < deadline, "the new certificate was never served");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The cluster keeps working (a write needs a quorum of peers).
    let client = c.client();
    client.put_simple("after-rotation", "v").await.expect("the cluster works after the rotation");

    // A new CA: beside the old one first, then every certificate from it.
    let new_ca = dir.path().join("new-ca");
    run(Command::new(bin("statenode")).args(["certs", "create-ca", "--certs-dir"]).arg(&new_ca));
    let old_only = dir.path().join("old-ca");
    std::fs::create_dir(&old_only).unwrap();
    for f in [ctls::CA_CERT, "client.alice.crt", "client.alice.key"] {
        std::fs::copy(certs.join(f), old_only.join(f)).unwrap();
    }
    let pem = |p: PathBuf| std::fs::read_to_string(p).unwrap();
    let both = pem(new_ca.join(ctls::CA_CERT)) + &pem(certs.join(ctls::CA_CERT));
    std::fs::write(certs.join(ctls::CA_CERT), both).unwrap();
    std::fs::copy(new_ca.join(ctls::CA_KEY), certs.join(ctls::CA_KEY)).unwrap();
    let certs_arg = certs.to_str().unwrap();
    run(Command::new(bin("statenode")).args([
        "certs",
        "create-node",
        "--overwrite",
        "--certs-dir",
        certs_arg,
        "localhost",
        "127.0.0.1",
    ]));
    run(Command::new(bin("statenode")).args([
        "certs",
        "create-client",
        "alice",
        "--overwrite",
        "--certs-dir",
        certs_arg,
    ]));
    let new_node = ctls::read_certs(&certs.join(NODE_CERT)).unwrap()[0].to_vec();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while served_cert(&http, &certs).await != new_node {
        assert!(std::time::Instant::now() < deadline, "the new CA's certificate was never served");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The old CA dropped.
    std::fs::copy(new_ca.join(ctls::CA_CERT), certs.join(ctls::CA_CERT)).unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let new_client = |endpoints: &[String]| {
        let dialer = statenode_client::dialer(Some(&new_ca), None).unwrap();
        let opts = Options { deadline: Duration::from_secs(20), ..Options::default() };
        statenode_client::Client::with_dialer(endpoints, opts, dialer).unwrap()
    };
    new_client(&c.endpoints()).put_simple("new-ca", "v").await.expect("a client of the new CA");
    let old = |args: &[&str]| {
        let (crt, key) = ctls::client_files(&old_only, "alice");
        let ca = old_only.join(ctls::CA_CERT);
        let base = ["--cacert", ca.to_str().unwrap(), "--cert", crt.to_str().unwrap(), "--key", key.to_str().unwrap()];
        curl(&[&base[..], args].concat())
    };
    assert!(!old(&[&format!("https://{http}/livez")]).status.success(), "a client of the old CA got in");
    let (crt, key) = ctls::client_files(&certs, "alice");
    let ca = certs.join(ctls::CA_CERT);
    let new_alice = ["--cacert", ca.to_str().unwrap(), "--cert", crt.to_str().unwrap(), "--key", key.to_str().unwrap()];
    let out = curl(&[&new_alice[..], &[&format!("https://{http}/v1/kv/new-ca")]].concat());
    assert_eq!(String::from_utf8_lossy(&out.stdout), "v", "{out:?}");
    // A node restarted now dials and is dialed under the new CA only.
    c.node(3).restart();
    let three = vec![c.nodes[2].grpc.clone()];
    let got = new_client(&three).get("new-ca", pb::Consistency::Linearizable).await.expect("node 3 back");
    assert_eq!(got.expect("new-ca").value, "v".as_bytes());
}

/// Client certificates name principals under the rules (issue 13): `alice` reads and writes
/// her own keys; `reader` only reads them; a client without a certificate (no token is
/// asked for) may do nothing; cluster operations need `admin`. Over gRPC (the Rust client)
/// and HTTPS (curl with the certificate).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificates_are_principals_under_the_rules() {
    let _g = serial().await;
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    make_certs(&certs);
    let certs_arg = certs.to_str().unwrap();
    run(Command::new(bin("statenode")).args(["certs", "create-client", "reader", "--certs-dir", certs_arg]));
    let config = dir.path().join("rules.toml");
    std::fs::write(
        &config,
        r#"
[[authorization.rules]]
principals = { usernames = ["alice"] }
stateStoreResources = [{ method = "ReadWrite", keys = ["alice/*"] }]

[[authorization.rules]]
principals = { usernames = ["reader"] }
brokerResources = [{ method = "Connect" }]
stateStoreResources = [{ method = "Read", keys = ["alice/*"] }]
"#,
    )
    .unwrap();
    let args = ["--certs-dir", certs_arg, "--config", config.to_str().unwrap()];
    let c = TestCluster::start_with_args(3, true, &args).await;
    let as_client = |name: Option<&str>| {
        let dialer = statenode_client::dialer(Some(&certs), name).expect("certs");
        let opts = Options { deadline: Duration::from_secs(5), ..Options::default() };
        statenode_client::Client::with_dialer(&c.endpoints(), opts, dialer).unwrap()
    };
    let alice = as_client(Some("alice"));
    alice.put_simple("alice/1", "mine").await.expect("alice writes her own key");
    denied(alice.put_simple("bob/1", "x").await);
    denied(alice.leave(3).await);

    let reader = as_client(Some("reader"));
    let got = reader.get("alice/1", pb::Consistency::Linearizable).await.unwrap().expect("alice/1");
    assert_eq!(got.value, "mine".as_bytes());
    denied(reader.put_simple("alice/2", "x").await);
    denied(reader.get("bob/1", pb::Consistency::Linearizable).await);
    let list = reader.list(pb::ListRequest { prefix: "".into(), ..Default::default() }).await.unwrap();
    assert_eq!(list.kvs.iter().map(|kv| kv.key.as_ref()).collect::<Vec<&[u8]>>(), [b"alice/1".as_ref()]);

    let nobody = as_client(None);
    denied(nobody.get("alice/1", pb::Consistency::Linearizable).await);

    // curl over HTTPS with reader's certificate: reads, and is refused a write.
    let http = c.nodes[1].http.clone();
    let (crt, key) = ctls::client_files(&certs, "reader");
    let ca = certs.join(ctls::CA_CERT);
    let with_cert = ["--cacert", ca.to_str().unwrap(), "--cert", crt.to_str().unwrap(), "--key", key.to_str().unwrap()];
    let out = curl(&[&with_cert[..], &[&format!("https://{http}/v1/kv/alice/1")]].concat());
    assert_eq!(String::from_utf8_lossy(&out.stdout), "mine", "{out:?}");
    let put = format!("https://{http}/v1/kv/alice/1");
    let out =
        curl(&[&with_cert[..], &["-o", "/dev/null", "-w", "%{http_code}", "-X", "PUT", "--data", "x", &put]].concat());
    assert_eq!(String::from_utf8_lossy(&out.stdout), "403", "{out:?}");
    let got = alice.get("alice/1", pb::Consistency::Linearizable).await.unwrap().expect("alice/1");
    assert_eq!(got.value, "mine".as_bytes(), "a refused write changed nothing");

    // MQTT (paho): the certificate names the principal the rules let connect.
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("py/mqtt_cert.py");
    let mqtt_args = [c.nodes[2].mqtt.as_str(), ca.to_str().unwrap(), crt.to_str().unwrap(), key.to_str().unwrap()];
    let out = Command::new("python3").arg(script).args(mqtt_args).output().expect("python3");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("all MQTT certificate checks passed"),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
