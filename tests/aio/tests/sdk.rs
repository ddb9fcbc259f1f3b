//! Microsoft's Azure IoT Operations Rust SDK (`azure_iot_operations_services` 1.3.0: state
//! store, lease and lock clients), unmodified, against a real three-node statenode cluster over
//! MQTT on loopback without TLS — connected to a follower, so every request is forwarded to the
//! leader, and observing a change made over HTTP through another node.

use azure_iot_operations_mqtt::aio::connection_settings::MqttConnectionSettingsBuilder;
use azure_iot_operations_mqtt::session::{Session, SessionExitHandle, SessionOptionsBuilder};
use azure_iot_operations_protocol::application::ApplicationContextBuilder;
use azure_iot_operations_protocol::common::hybrid_logical_clock::HybridLogicalClock;
use azure_iot_operations_services::leased_lock::{self, lease, lock};
use azure_iot_operations_services::state_store::{self, Operation, ServiceError, SetCondition, SetOptions};
use statenode_e2e::TestCluster;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;

const T: Duration = Duration::from_secs(10);

/// One SDK application: an MQTT session (run in the background) and its state store client.
struct App {
    client: Arc<state_store::Client>,
    exit: SessionExitHandle,
    session: JoinHandle<()>,
}

impl App {
    fn connect(mqtt: &str, client_id: &str) -> App {
        let (host, port) = mqtt.rsplit_once(':').expect("host:port");
        let settings = MqttConnectionSettingsBuilder::default()
            .client_id(client_id)
            .hostname(host)
            .tcp_port(port.parse::<u16>().expect("port"))
            .keep_alive(Duration::from_secs(5))
            .use_tls(false)
            .build()
            .expect("connection settings");
        let options = SessionOptionsBuilder::default().connection_settings(settings).build().expect("session options");
        let session = Session::new(options).expect("session");
        let client = state_store::Client::new(
            ApplicationContextBuilder::default().build().expect("application context"),
            session.create_managed_client(),
            session.create_session_monitor(),
            state_store::ClientOptionsBuilder::default().build().expect("client options"),
        )
        .expect("state store client");
        let exit = session.create_exit_handle();
        let session = tokio::spawn(async move {
            if let Err(e) = session.run().await {
                eprintln!("session ended: {e:?}");
            }
        });
        App { client: Arc::new(client), exit, session }
    }

    async fn stop(self) {
        let _ = self.client.shutdown().await;
        if self.exit.try_exit().is_err() {
            self.exit.force_exit();
        }
        let _ = tokio::time::timeout(T, self.session).await;
    }
}

fn opts(set_condition: SetCondition, expires: Option<Duration>) -> SetOptions {
    SetOptions { set_condition, expires, ..SetOptions::default() }
}

fn service_error(e: &state_store::Error) -> Option<&ServiceError> {
    match e.kind() {
        state_store::ErrorKind::ServiceError(s) => Some(s),
        _ => None,
    }
}

async fn cluster() -> (TestCluster, String, String) {
    let c = TestCluster::start(3, false).await;
    let leader = c.wait_leader(None, Duration::from_secs(20)).await;
    let follower = c.nodes.iter().find(|n| n.id != leader).expect("a follower");
    let other = c.nodes.iter().find(|n| n.id != follower.id).expect("another node");
    let (mqtt, http) = (follower.mqtt.clone(), other.http.clone());
    (c, mqtt, http)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_store_client_set_get_del_vdel_fencing() {
    let (_c, mqtt, _) = cluster().await;
    let app = App::connect(&mqtt, "aio-sdk-kv");
    let s = &app.client;
    let k = || b"sdk-key".to_vec();

    let first = s.set(k(), b"v1".to_vec(), T, None, SetOptions::default()).await.expect("set");
    assert!(first.response);
    let v1 = first.version.expect("a version on SET");
    let again = s.set(k(), b"v2".to_vec(), T, None, opts(SetCondition::OnlyIfDoesNotExist, None)).await.unwrap();
    assert!(!again.response, "NX on an existing key");
    let equal = s.set(k(), b"v1".to_vec(), T, None, opts(SetCondition::OnlyIfEqualOrDoesNotExist, None)).await;
    assert!(equal.unwrap().response, "NEX with the same value");
    let other = s.set(k(), b"zz".to_vec(), T, None, opts(SetCondition::OnlyIfEqualOrDoesNotExist, None)).await;
    assert!(!other.unwrap().response, "NEX with another value");

    let got = s.get(k(), T).await.expect("get");
    assert_eq!(got.response, Some(b"v1".to_vec()));
    assert_ne!(got.version.expect("a version on GET"), v1, "the NEX renewal made a new version");
    assert_eq!(s.get(b"sdk-absent".to_vec(), T).await.unwrap().response, None);

    assert_eq!(s.vdel(k(), b"nope".to_vec(), None, T).await.unwrap().response, -1);
    assert_eq!(s.vdel(k(), b"v1".to_vec(), None, T).await.unwrap().response, 1);
    assert_eq!(s.del(k(), None, T).await.unwrap().response, 0);

    // Fencing: a SET with a token fences the key; without (or with an older one) it is refused.
    let token = HybridLogicalClock::new();
    let fenced = || b"sdk-fenced".to_vec();
    assert!(s.set(fenced(), b"a".to_vec(), T, Some(token.clone()), SetOptions::default()).await.unwrap().response);
    let e = s.set(fenced(), b"b".to_vec(), T, None, SetOptions::default()).await.expect_err("needs the token");
    assert!(matches!(service_error(&e), Some(ServiceError::MissingFencingToken)), "{e:?}");
    let e = s.del(fenced(), None, T).await.expect_err("needs the token");
    assert!(matches!(service_error(&e), Some(ServiceError::MissingFencingToken)), "{e:?}");
    assert_eq!(s.del(fenced(), Some(token), T).await.unwrap().response, 1);

    // A TTL: gone once it ran out.
    let ttl = Some(Duration::from_millis(800));
    assert!(
        s.set(b"sdk-ttl".to_vec(), b"x".to_vec(), T, None, opts(SetCondition::Unconditional, ttl))
            .await
            .unwrap()
            .response
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(s.get(b"sdk-ttl".to_vec(), T).await.unwrap().response, None);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn observers_hear_of_every_change_from_every_door() {
    let (_c, mqtt, http) = cluster().await;
    let app = App::connect(&mqtt, "aio-sdk-observer");
    let s = &app.client;
    let key = || b"sdk-watched".to_vec();
    let mut obs = s.observe(key(), T).await.expect("observe").response;

    s.set(key(), b"one".to_vec(), T, None, SetOptions::default()).await.unwrap();
    let n = next(&mut obs, "SET notification").await;
    assert_eq!((n.key.clone(), n.operation.clone()), (key(), Operation::Set(b"one".to_vec())));
    s.del(key(), None, T).await.unwrap();
    assert_eq!(next(&mut obs, "DELETE notification").await.operation, Operation::Del);

    // Written over HTTP through another node: the observer here still hears of it.
    let body = b"from-http";
    let put = tokio::task::spawn_blocking(move || http_put(&http, "sdk-watched", body)).await.unwrap();
    assert_eq!(put, 200);
    assert_eq!(next(&mut obs, "notification of an HTTP write").await.operation, Operation::Set(body.to_vec()));

    // A TTL expiry is a DELETE, soon after the key runs out.
    let ttl = Some(Duration::from_secs(1));
    s.set(key(), b"brief".to_vec(), T, None, opts(SetCondition::Unconditional, ttl)).await.unwrap();
    assert_eq!(next(&mut obs, "SET before expiry").await.operation, Operation::Set(b"brief".to_vec()));
    let start = Instant::now();
    assert_eq!(next(&mut obs, "DELETE on expiry").await.operation, Operation::Del);
    assert!(start.elapsed() < Duration::from_secs(3), "expiry notified after {:?}", start.elapsed());

    assert!(s.unobserve(key(), T).await.unwrap().response);
    assert!(!s.unobserve(key(), T).await.unwrap().response);
    app.stop().await;
}

/// The node a client is connected to dies: the client reconnects through a loopback
/// balancer (as through a Kubernetes Service) to another node, which resumes its session
/// from the replicated record (`session_present = 1`: the SDK would end its session
/// otherwise) with its subscriptions, so its requests and notifications carry on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_whose_node_dies_carries_on_with_its_session_through_a_balancer() {
    let mut c = TestCluster::start(3, false).await;
    let leader = c.wait_leader(None, Duration::from_secs(20)).await;
    let doomed = c.follower(leader).id;
    let mut order: Vec<&statenode_e2e::Proc> = c.nodes.iter().collect();
    order.sort_by_key(|n| (n.id != doomed, n.id));
    let lb = statenode_e2e::proxy::Proxy::balance(order.iter().map(|n| n.mqtt.clone()).collect()).await;
    let leader_http = c.nodes.iter().find(|n| n.id == leader).expect("leader").http.clone();

    let app = App::connect(&lb.addr, "aio-sdk-failover");
    let s = &app.client;
    let key = || b"sdk-failover".to_vec();
    assert!(s.set(b"sdk-kept".to_vec(), b"before".to_vec(), T, None, SetOptions::default()).await.unwrap().response);
    let mut obs = s.observe(key(), T).await.expect("observe").response;
    s.set(key(), b"one".to_vec(), T, None, SetOptions::default()).await.unwrap();
    assert_eq!(next(&mut obs, "SET before the failover").await.operation, Operation::Set(b"one".to_vec()));

    c.node(doomed).kill9();
    let killed = Instant::now();
    // Requests carry on once the session reconnected (the SDK may fail some meanwhile).
    let mut attempts = 0;
    loop {
        attempts += 1;
        match s.set(b"sdk-after".to_vec(), b"after".to_vec(), T, None, SetOptions::default()).await {
            Ok(r) => {
                assert!(r.response);
                break;
            }
            Err(e) if killed.elapsed() < Duration::from_secs(40) => {
                eprintln!("while failing over: {e:?}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("no request succeeded within 40 s of the kill: {e:?}"),
        }
    }
    eprintln!("first request after the kill succeeded after {:?} ({attempts} attempts)", killed.elapsed());
    assert!(!app.session.is_finished(), "the SDK ended its session: it was not resumed");
    assert_eq!(s.get(b"sdk-kept".to_vec(), T).await.unwrap().response, Some(b"before".to_vec()));

    // The SDK drops its observations when a connection drops (AIO's store forgets them), so
    // the application observes again; the notifications come over the resumed subscription.
    drop(obs);
    let mut obs = s.observe(key(), T).await.expect("observe after the failover").response;
    let put = tokio::task::spawn_blocking(move || http_put(&leader_http, "sdk-failover", b"two")).await.unwrap();
    assert_eq!(put, 200);
    assert_eq!(next(&mut obs, "notification after the failover").await.operation, Operation::Set(b"two".to_vec()));
    s.del(key(), None, T).await.unwrap();
    assert_eq!(next(&mut obs, "DELETE after the failover").await.operation, Operation::Del);
    assert!(!app.session.is_finished(), "the SDK ended its session");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_and_locks_exclude_each_other() {
    let (_c, mqtt, _) = cluster().await;
    let (a, b) = (App::connect(&mqtt, "aio-holder-a"), App::connect(&mqtt, "aio-holder-b"));
    let lease_a = lease::Client::new(a.client.clone(), b"sdk-lease".to_vec(), b"aio-holder-a".to_vec()).unwrap();
    let lease_b = lease::Client::new(b.client.clone(), b"sdk-lease".to_vec(), b"aio-holder-b".to_vec()).unwrap();
    let token = lease_a.acquire(Duration::from_secs(10), T, None).await.expect("A acquires");
    assert_eq!(lease_a.current_lease_fencing_token(), Some(token));
    let held = lease_b.acquire(Duration::from_secs(10), T, None).await.expect_err("B must wait");
    assert!(matches!(held.kind(), leased_lock::ErrorKind::LeaseAlreadyHeld), "{held:?}");
    assert_eq!(lease_b.get_holder(T).await.unwrap(), Some(b"aio-holder-a".to_vec()));
    lease_a.release(T).await.expect("A releases");
    lease_b.acquire(Duration::from_secs(2), T, None).await.expect("B acquires once A released");
    // B never releases: the lease runs out by itself, and A gets it.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    lease_a.acquire(Duration::from_secs(10), T, None).await.expect("A acquires after B's lease expired");
    lease_a.release(T).await.unwrap();

    // Locks: B waits (for the DELETE notification) until A unlocks.
    let lock_a = lock::Client::new(a.client.clone(), b"sdk-lock".to_vec(), b"aio-holder-a".to_vec()).unwrap();
    let lock_b = lock::Client::new(b.client.clone(), b"sdk-lock".to_vec(), b"aio-holder-b".to_vec()).unwrap();
    lock_a.lock(Duration::from_secs(30), T, None).await.expect("A locks");
    let waiting = tokio::spawn(async move {
        let got = lock_b.lock(Duration::from_secs(30), T, None).await;
        (got.is_ok(), Instant::now(), lock_b)
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!waiting.is_finished(), "B locked while A held the lock");
    let unlocked = Instant::now();
    lock_a.unlock(T).await.expect("A unlocks");
    let (ok, when, lock_b) = tokio::time::timeout(T, waiting).await.expect("B locks after A").unwrap();
    assert!(ok && when >= unlocked, "B's lock came before A's unlock");
    lock_b.unlock(T).await.unwrap();
    a.stop().await;
    b.stop().await;
}

/// `statenode serve` with no flags at all, in an empty directory: the SDK's defaults for a
/// broker without TLS (127.0.0.1:1883) just work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unmodified_aio_program_runs_against_statenode_serve_with_no_flags() {
    let _g = statenode_e2e::serial().await;
    for port in [3500, 50001, 7000, 1883] {
        let free = std::net::TcpListener::bind(("0.0.0.0", port)).is_ok();
        assert!(free, "port {port} is taken: this test runs `statenode serve` on its default ports");
    }
    let dir = tempfile::tempdir().unwrap();
    let child = std::process::Command::new(statenode_e2e::bin("statenode"))
        .arg("serve")
        .current_dir(dir.path())
        .env_remove("RUST_LOG")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("statenode serve");
    let _node = Reaped(child);
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect("127.0.0.1:1883").is_err() {
        assert!(Instant::now() < deadline, "nothing listens on :1883");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let app = App::connect("127.0.0.1:1883", "aio-defaults");
    let s = &app.client;
    let mut obs = s.observe(b"hello".to_vec(), T).await.expect("observe").response;
    assert!(s.set(b"hello".to_vec(), b"world".to_vec(), T, None, SetOptions::default()).await.unwrap().response);
    assert_eq!(next(&mut obs, "SET notification").await.operation, Operation::Set(b"world".to_vec()));
    assert_eq!(s.get(b"hello".to_vec(), T).await.unwrap().response, Some(b"world".to_vec()));
    let lease = lease::Client::new(app.client.clone(), b"l".to_vec(), b"aio-defaults".to_vec()).unwrap();
    lease.acquire(Duration::from_secs(5), T, None).await.expect("lease");
    lease.release(T).await.expect("release");
    app.stop().await;
}

/// Kills the child when dropped (a failed assertion must not leak the process).
struct Reaped(std::process::Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The next notification (bounded wait).
async fn next(obs: &mut state_store::KeyObservation, what: &str) -> state_store::KeyNotification {
    let got = tokio::time::timeout(T, obs.recv_notification()).await;
    got.unwrap_or_else(|_| panic!("timed out waiting for {what}"))
        .unwrap_or_else(|| panic!("{what}: observation ended"))
        .0
}

/// `PUT /v1/kv/{key}` on a node's HTTP port; the status code.
fn http_put(addr: &str, key: &str, body: &[u8]) -> u16 {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("http connect");
    s.set_read_timeout(Some(T)).unwrap();
    let head =
        format!("PUT /v1/kv/{key} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len());
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    answer.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0)
}
