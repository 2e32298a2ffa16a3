//! The seeds' stories and the write-once trait against a three-member
//! cluster started in this process: each outcome asserted, not just run.

use std::collections::BTreeSet;
use synod_client::{stories, Client, ServiceWriteOnce};
use synod_protocols::write_once::{LocalWriteOnce, SharedWriteOnce, WriteOnce};
use synod_server::cluster::{start_cluster, ClusterSpec, RunningMember};
use synod_sim::faults::Schedule;
use synod_sim::sim_write_once::{self, SimWriteOnce};
use synod_sim::Algo;

use synod_server::cluster::free_loopback_port as free_port;

async fn cluster(dir: &std::path::Path) -> (Vec<RunningMember>, Vec<String>) {
    let ports: Vec<(u16, u16)> = (0..3).map(|_| (free_port(), free_port())).collect();
    let spec = ClusterSpec::local(dir.to_path_buf(), &ports);
    let members = start_cluster(&spec).await.unwrap();
    let eps = spec.members.iter().map(|m| m.client.to_string()).collect();
    (members, eps)
}

/// One function, written once against the trait: several offers to one
/// variable (through separate handles), and what each handle then learns.
async fn offers_then_learn<W: WriteOnce<String>>(handles: &[&W], offers: &[&str]) -> Vec<String> {
    let mut learned = Vec::new();
    for (h, offer) in handles.iter().zip(offers) {
        learned.push(
            h.try_initialize(offer.to_string())
                .await
                .expect("offer answered"),
        );
    }
    for h in handles {
        learned.push(h.final_value().await.expect("final value"));
    }
    learned
}

fn one_winner_among(learned: &[String], offers: &[&str]) -> String {
    let distinct: BTreeSet<&String> = learned.iter().collect();
    assert_eq!(
        distinct.len(),
        1,
        "everybody learns the same value: {learned:?}"
    );
    let winner = learned[0].clone();
    assert!(
        offers.contains(&winner.as_str()),
        "the winner was offered: {winner}"
    );
    winner
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stories_hold_on_a_real_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let (members, eps) = cluster(dir.path()).await;
    let offers = ["alice", "bob", "carol"];

    // The write-once trait: in one thread, shared, and on the service.
    let local = LocalWriteOnce::new();
    let got = offers_then_learn(&[&local, &local, &local], &offers).await;
    assert_eq!(one_winner_among(&got, &offers), "alice");
    let shared = SharedWriteOnce::new();
    let got = offers_then_learn(&[&shared, &shared, &shared], &offers).await;
    assert_eq!(one_winner_among(&got, &offers), "alice");
    let handles: Vec<ServiceWriteOnce<String>> = eps
        .iter()
        .map(|e| ServiceWriteOnce::new(Client::connect(&[e]).unwrap(), "trait/var"))
        .collect();
    let refs: Vec<&ServiceWriteOnce<String>> = handles.iter().collect();
    let got = offers_then_learn(&refs, &offers).await;
    assert_eq!(
        one_winner_among(&got, &offers),
        "alice",
        "the first offer in time wins"
    );
    // And on simulated nodes of each write-once algorithm, one handle per
    // node, the same function and the same outcome.
    for algo in [Algo::Coordinator, Algo::Majority, Algo::Paxos] {
        let nodes = sim_write_once::cluster::<String>(algo, 5, 1, Schedule::default());
        let refs: Vec<&SimWriteOnce<String>> = nodes.iter().take(3).collect();
        let got = offers_then_learn(&refs, &offers).await;
        assert_eq!(one_winner_among(&got, &offers), "alice", "{}", algo.name());
    }

    // A reader waiting before any offer learns the value once decided.
    let waiter = {
        let c = Client::connect(&eps[2..]).unwrap();
        tokio::spawn(async move {
            ServiceWriteOnce::<String>::new(c, "trait/late")
                .final_value()
                .await
        })
    };
    let decided =
        ServiceWriteOnce::<String>::new(Client::connect(&eps[..1]).unwrap(), "trait/late")
            .try_initialize("dave".into())
            .await
            .unwrap();
    assert_eq!(waiter.await.unwrap().unwrap(), decided);

    // User of the day: 20 concurrent pickers, one winner, learned by all.
    let picks = stories::user_of_the_day(&eps, "2026-12-04", 20)
        .await
        .unwrap();
    let offered: Vec<&str> = picks.offered.iter().map(String::as_str).collect();
    one_winner_among(&picks.learned, &offered);
    assert_eq!(picks.learned.len(), 20);

    // Order cancellation: exactly one fate, both sides learn it.
    for order in 0..5 {
        let fate = stories::order_cancellation(&eps, &format!("o-{order}"))
            .await
            .unwrap();
        assert_eq!(fate.shipper_learned, fate.canceller_learned, "{fate:?}");
        assert!(["shipped", "cancelled"].contains(&fate.shipper_learned.as_str()));
    }

    // Fencing: the holder whose lease ran out is turned away by the resource.
    let f = stories::fencing_lock(&eps, "fencing/lock", 2)
        .await
        .unwrap();
    assert!(f.next_token > f.stale_token, "{f:?}");
    assert!(f.next_write.is_ok(), "{f:?}");
    let refused = f
        .stale_write
        .as_ref()
        .expect_err("the stale holder's write is rejected");
    assert!(refused.contains("older than"), "{refused}");
    assert_eq!(
        f.log.len(),
        1,
        "only the current holder's update applied: {:?}",
        f.log
    );

    // Branch pushes: every push lands once, in one order, after retries.
    let b = stories::branch_pushes(&eps, "main", 4, 5).await.unwrap();
    assert_eq!(b.history.len(), 20, "{b:?}");
    let unique: BTreeSet<&String> = b.history.iter().collect();
    assert_eq!(unique.len(), 20, "no push twice: {b:?}");
    for p in 0..4 {
        let mine: Vec<&String> = b
            .history
            .iter()
            .filter(|c| c.starts_with(&format!("p{p}c")))
            .collect();
        let want: Vec<String> = (0..5).map(|c| format!("p{p}c{c}")).collect();
        assert_eq!(
            mine,
            want.iter().collect::<Vec<_>>(),
            "each pusher's commits in its order"
        );
    }

    // Two servers: alone they diverge, through synod they agree.
    let t = stories::two_servers(&eps, "acct-42").await.unwrap();
    assert_ne!(t.alone.0, t.alone.1, "{t:?}");
    assert_eq!(t.agreed.0, t.agreed.1, "{t:?}");

    // Configuration: every watcher applies every version, in order.
    let c = stories::config_watch(&eps, "config/app", 10).await.unwrap();
    assert_eq!(c.applied.len(), 3);
    for applied in &c.applied {
        assert_eq!(applied, &c.written);
    }

    for m in members {
        m.stop().await;
    }
}

/// Not a test on its own: the body of a candidate process that
/// `leader_election_survives_killing_the_leader` starts by running this test
/// binary again with `SYNOD_CANDIDATE` set.
#[test]
fn candidate_process() {
    let Ok(spec) = std::env::var("SYNOD_CANDIDATE") else {
        return;
    };
    let (name, eps) = spec.split_once('@').expect("NAME@ENDPOINTS");
    let eps: Vec<String> = eps.split(',').map(str::to_string).collect();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(stories::candidate(&eps, "election/pilot", name, 2))
        .expect("campaign");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_election_survives_killing_the_leader() {
    let dir = tempfile::tempdir().unwrap();
    let (members, eps) = cluster(dir.path()).await;
    let me = std::env::current_exe().unwrap();
    let joined = eps.join(",");
    let s = stories::leader_election(&eps, "election/pilot", 3, |name| {
        std::process::Command::new(&me)
            .args(["--exact", "candidate_process", "--nocapture"])
            .env("SYNOD_CANDIDATE", format!("{name}@{joined}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("candidate process starts")
    })
    .await
    .unwrap();
    assert_eq!(s.observed.len(), 2, "{s:?}");
    assert_eq!(s.observed[0], s.killed);
    assert_ne!(s.observed[1], s.killed, "a live candidate took over: {s:?}");
    assert!(s.observed[1].starts_with("candidate-"), "{s:?}");
    for m in members {
        m.stop().await;
    }
}
