//! kill -9 in the middle of a heavy write load, many times in a row (disk mode): after each
//! restart every acknowledged write is readable. Group commit acknowledges a write once a
//! quorum fsynced the batch holding it, and applies reach the state machine's disk lazily;
//! this is the test that a crash at any point loses nothing acknowledged.

use statenode_client::v1 as pb;
use statenode_client::{Client, Options};
use statenode_e2e::{serial, single_client, TestCluster};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const ROUNDS: usize = 8;
const WRITERS: usize = 16;

fn client_of(endpoints: &[String]) -> Client {
    let opts = Options { deadline: Duration::from_secs(10), ..Options::default() };
    Client::new(endpoints, opts).expect("client")
}

/// Writers putting new keys until `stop`, recording each acknowledged one.
fn start_writers(
    endpoints: Vec<String>,
    round: usize,
    acked: Arc<Mutex<BTreeMap<String, String>>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..WRITERS)
        .map(|w| {
            let (endpoints, acked, stop) = (endpoints.clone(), acked.clone(), stop.clone());
            tokio::spawn(async move {
                let client = client_of(&endpoints);
                let mut i = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let (k, v) = (format!("r{round}/w{w}/{i:05}"), format!("v{round}.{w}.{i}"));
                    i += 1;
                    if client.put_simple(k.clone(), v.clone()).await.is_ok() {
                        acked.lock().unwrap().insert(k, v);
                    }
                }
            })
        })
        .collect()
}

async fn check_all(grpc: &str, acked: &BTreeMap<String, String>, consistency: pb::Consistency) -> Result<(), String> {
    let got: BTreeMap<String, String> = TestCluster::list_all(&single_client(grpc), "", consistency)
        .await
        .map_err(|e| e.to_string())?
        .into_iter()
        .collect();
    let lost: Vec<&String> = acked.iter().filter(|(k, v)| got.get(*k) != Some(*v)).map(|(k, _)| k).collect();
    match lost.is_empty() {
        true => Ok(()),
        false => Err(format!("{} acknowledged writes missing, e.g. {:?}", lost.len(), &lost[..lost.len().min(5)])),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_nine_under_write_load_loses_no_acknowledged_write() {
    let _g = serial().await;
    let mut c = TestCluster::start(3, false).await;
    let endpoints = c.endpoints();
    let acked = Arc::new(Mutex::new(BTreeMap::new()));
    for round in 0..ROUNDS {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let writers = start_writers(endpoints.clone(), round, acked.clone(), stop.clone());
        // Mostly the leader (its fsync overlaps replication), sometimes a follower.
        let leader = c.wait_leader(None, Duration::from_secs(20)).await;
        let victim = if round % 3 == 2 { c.follower(leader).id } else { leader };
        tokio::time::sleep(Duration::from_millis(400 + 150 * (round as u64 % 4))).await;
        c.node(victim).kill9();
        tokio::time::sleep(Duration::from_millis(700)).await;
        c.node(victim).restart();
        tokio::time::sleep(Duration::from_millis(300)).await;
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for w in writers {
            w.await.unwrap();
        }
        let acked_now = acked.lock().unwrap().clone();
        let survivor = c.follower(victim).grpc.clone();
        check_all(&survivor, &acked_now, pb::Consistency::Linearizable)
            .await
            .unwrap_or_else(|e| panic!("round {round}, node {victim} killed: {e}"));
        // The killed node comes back with every acknowledged write in its own state.
        let grpc = c.node(victim).grpc.clone();
        let deadline = Instant::now() + Duration::from_secs(30);
        while let Err(e) = check_all(&grpc, &acked_now, pb::Consistency::Stale).await {
            assert!(
                Instant::now() < deadline,
                "round {round}: node {victim} never caught up: {e}\n{}",
                c.node(victim).log_tail()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        eprintln!("round {round}: node {victim} killed and back, {} acknowledged writes all readable", acked_now.len());
    }
}
