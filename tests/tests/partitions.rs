//! Real processes, peer links through loopback proxies: blackhole, delay and drop the links
//! of the leader and a follower under load, then check the client history with the chaos
//! suite's linearizability checker.

use chaos::checker;
use chaos::history::{self, History, Kind, Op, Outcome};
use statenode_client::{Client, Options};
use statenode_e2e::proxy::Mode;
use statenode_e2e::{serial, TestCluster};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

async fn perform(c: &Client, start: Instant, client_no: usize, key: String, kind: Kind) -> Op {
    history::perform(c, client_no, key, kind, || start.elapsed().as_micros() as u64).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxied_link_faults_keep_histories_linearizable() {
    let _g = serial().await;
    let (c, proxies) = TestCluster::start_proxied(3, true).await;
    let start = Instant::now();
    let history = Arc::new(Mutex::new(History::default()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let opts =
        Options { deadline: Duration::from_secs(4), attempt_timeout: Duration::from_secs(2), ..Options::default() };
    let workers: Vec<_> = (0..4)
        .map(|no| {
            let client = Client::new(&c.endpoints(), opts.clone()).unwrap();
            let (history, stop) = (history.clone(), stop.clone());
            tokio::spawn(async move {
                let mut n = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    n += 1;
                    let key = format!("k{}", (n + no as u64) % 3);
                    let kind = match n % 5 {
                        0 => Kind::Delete,
                        1 | 2 => Kind::Put(format!("c{no}-{n}")),
                        _ => Kind::Get,
                    };
                    let op = perform(&client, start, no, key, kind).await;
                    history.lock().unwrap().push(op);
                }
            })
        })
        .collect();
    let leader = c.wait_leader(None, Duration::from_secs(5)).await as usize - 1;
    let follower = (leader + 1) % 3;
    for (target, mode, secs) in [
        (leader, Mode::Blackhole, 3),
        (follower, Mode::Delay, 2),
        (leader, Mode::Drop, 2),
        (follower, Mode::Blackhole, 2),
    ] {
        tokio::time::sleep(Duration::from_secs(1)).await;
        proxies[target].set(mode);
        tokio::time::sleep(Duration::from_secs(secs)).await;
        proxies[target].set(Mode::Pass);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }
    // After the links heal, every key is read once more: lost writes show up here.
    let reader = Client::new(&c.endpoints(), Options::default()).unwrap();
    for k in 0..3 {
        let op = perform(&reader, start, 99, format!("k{k}"), Kind::Get).await;
        assert_ne!(op.outcome, Outcome::Failed, "cluster did not recover");
        history.lock().unwrap().push(op);
    }
    let h = history.lock().unwrap().clone();
    let acked = h.ops.iter().filter(|o| matches!(o.outcome, Outcome::Put { applied: true, .. })).count();
    assert!(acked > 20, "too little progress: {acked} acknowledged writes");
    if let Err(v) = checker::linearizable(&h) {
        panic!("{}\n{}", v.message, v.timeline.join("\n"));
    }
    checker::versions_monotonic(&h).unwrap();
    println!("{} ops, {acked} acknowledged writes, linearizable", h.ops.len());
}
