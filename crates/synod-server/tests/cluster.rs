//! A three-member cluster on loopback, through the etcd API: writes through
//! any member, linearizable reads everywhere, a leader that dies, a member
//! that comes back from its disk.

use pb::kv_client::KvClient;
use pb::maintenance_client::MaintenanceClient;
use std::time::{Duration, Instant};
use synod_etcd::pb::etcdserverpb as pb;
use synod_server::cluster::{start_cluster, start_member, ClusterSpec};
use tonic::transport::Channel;

mod common;
use common::free_port;

async fn client(spec: &ClusterSpec, i: usize) -> KvClient<Channel> {
    let url = format!("http://{}", spec.members[i].client);
    KvClient::new(Channel::from_shared(url).unwrap().connect_lazy())
}

/// Retries `put` until the cluster accepts it (an election may be under way).
async fn put_eventually(kv: &mut KvClient<Channel>, k: &str, v: &str) -> pb::PutResponse {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let req = pb::PutRequest {
            key: k.into(),
            value: v.into(),
            ..Default::default()
        };
        match kv.put(req).await {
            Ok(r) => return r.into_inner(),
            Err(e) if Instant::now() < deadline => {
                assert_eq!(e.code(), tonic::Code::Unavailable, "{e:?}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("no write accepted within 20 s: {e:?}"),
        }
    }
}

async fn get(kv: &mut KvClient<Channel>, k: &str) -> Option<Vec<u8>> {
    let r = kv
        .range(pb::RangeRequest {
            key: k.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    r.kvs.first().map(|kv| kv.value.clone())
}

async fn leader_index(spec: &ClusterSpec, alive: &[usize]) -> usize {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        for &i in alive {
            let url = format!("http://{}", spec.members[i].client);
            let mut m = MaintenanceClient::new(Channel::from_shared(url).unwrap().connect_lazy());
            if let Ok(s) = m.status(pb::StatusRequest {}).await {
                let s = s.into_inner();
                let leader = spec.members.iter().position(|m| m.member_id == s.leader);
                if let Some(l) = leader.filter(|l| alive.contains(l)) {
                    return l;
                }
            }
        }
        assert!(Instant::now() < deadline, "no leader among {alive:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_members_replicate_survive_a_leader_and_recover_from_disk() {
    let dir = tempfile::tempdir().unwrap();
    let ports: Vec<(u16, u16)> = (0..3).map(|_| (free_port(), free_port())).collect();
    let spec = ClusterSpec::local(dir.path().to_path_buf(), &ports);
    let mut members: Vec<Option<_>> = start_cluster(&spec)
        .await
        .unwrap()
        .into_iter()
        .map(Some)
        .collect();

    // Writes through every member (followers forward to the leader).
    for i in 0..3 {
        let mut kv = client(&spec, i).await;
        put_eventually(&mut kv, &format!("k{i}"), &format!("v{i}")).await;
    }
    for i in 0..3 {
        let mut kv = client(&spec, i).await;
        for j in 0..3 {
            assert_eq!(
                get(&mut kv, &format!("k{j}")).await,
                Some(format!("v{j}").into_bytes())
            );
        }
    }

    // The leader dies; the others elect a new one and keep every write.
    let l = leader_index(&spec, &[0, 1, 2]).await;
    members[l].take().unwrap().stop().await;
    let alive: Vec<usize> = (0..3).filter(|i| *i != l).collect();
    let mut kv = client(&spec, alive[0]).await;
    let r = put_eventually(&mut kv, "after", "failover").await;
    assert!(r.header.unwrap().revision >= 5);
    let mut kv2 = client(&spec, alive[1]).await;
    assert_eq!(get(&mut kv2, "k0").await, Some(b"v0".to_vec()));
    assert_eq!(get(&mut kv2, "after").await, Some(b"failover".to_vec()));

    // It comes back from its disk and catches up.
    members[l] = Some(start_member(&spec, l).await.unwrap());
    let mut back = client(&spec, l).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        // A serializable read shows what this member itself has applied.
        let r = back
            .range(pb::RangeRequest {
                key: "after".into(),
                serializable: true,
                ..Default::default()
            })
            .await;
        if let Ok(r) = r {
            if r.into_inner().kvs.first().map(|kv| kv.value.clone()) == Some(b"failover".to_vec()) {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the restarted member never caught up"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(get(&mut back, "k1").await, Some(b"v1".to_vec()));
    for m in members.into_iter().flatten() {
        m.stop().await;
    }
}

#[tokio::test]
async fn status_reports_the_api_level_and_real_sizes() {
    let dir = tempfile::tempdir().unwrap();
    let ports: Vec<(u16, u16)> = (0..3).map(|_| (free_port(), free_port())).collect();
    let spec = ClusterSpec::local(dir.path().to_path_buf(), &ports);
    let members = start_cluster(&spec).await.unwrap();
    let url = format!("http://{}", spec.members[0].client);
    let mut maint = MaintenanceClient::new(Channel::from_shared(url).unwrap().connect_lazy());
    let mut kv = client(&spec, 0).await;
    put_eventually(&mut kv, "first", "x").await;
    let before = maint
        .status(pb::StatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(before.version, "3.4.0");
    // The WAL and snapshots on disk, preallocated segments included.
    assert!(
        before.db_size >= before.db_size_in_use && before.db_size > 0,
        "{before:?}"
    );

    let value = "v".repeat(1024);
    for i in 0..100 {
        kv.put(pb::PutRequest {
            key: format!("sized/{i:03}").into(),
            value: value.clone().into(),
            ..Default::default()
        })
        .await
        .unwrap();
    }
    // Serializable status reads what member 0 applied: wait for the last put.
    let deadline = Instant::now() + Duration::from_secs(20);
    let grown = loop {
        let s = maint
            .status(pb::StatusRequest {})
            .await
            .unwrap()
            .into_inner();
        if s.db_size_in_use - before.db_size_in_use >= 100 * 1024 {
            break s;
        }
        assert!(Instant::now() < deadline, "in-use size never grew: {s:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };

    // Deleting keeps the old revisions (tombstones and history) in use until
    // a compaction frees them.
    let del = kv
        .delete_range(pb::DeleteRangeRequest {
            key: "sized/".into(),
            range_end: "sized0".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(del.deleted, 100);
    kv.compact(pb::CompactionRequest {
        revision: del.header.unwrap().revision,
        physical: true,
    })
    .await
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let s = maint
            .status(pb::StatusRequest {})
            .await
            .unwrap()
            .into_inner();
        if s.db_size_in_use <= grown.db_size_in_use - 100 * 1024 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "compaction freed nothing: {} then {}",
            grown.db_size_in_use,
            s.db_size_in_use
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for m in members {
        m.stop().await;
    }
}

/// A leader that is stopped in order hands its leadership to a follower
/// first, as etcd does: with a 5 s election timeout, an election after a
/// silent leader would take 5 s or more; the handoff takes a round trip.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_leader_hands_its_leadership_over() {
    let dir = tempfile::tempdir().unwrap();
    let ports: Vec<(u16, u16)> = (0..3).map(|_| (free_port(), free_port())).collect();
    let mut spec = ClusterSpec::local(dir.path().to_path_buf(), &ports);
    spec.tuning.election = Duration::from_secs(5);
    let mut members: Vec<Option<_>> = start_cluster(&spec)
        .await
        .unwrap()
        .into_iter()
        .map(Some)
        .collect();
    let mut kv = client(&spec, 0).await;
    // The first election, too, is fast: members fast-forward their election
    // clocks once a quorum is connected.
    put_eventually(&mut kv, "before", "handoff").await;
    let l = leader_index(&spec, &[0, 1, 2]).await;
    let old_term = {
        let url = format!("http://{}", spec.members[l].client);
        let mut m = MaintenanceClient::new(Channel::from_shared(url).unwrap().connect_lazy());
        m.status(pb::StatusRequest {})
            .await
            .unwrap()
            .into_inner()
            .raft_term
    };
    let started = Instant::now();
    members[l].take().unwrap().stop().await;
    let alive: Vec<usize> = (0..3).filter(|i| *i != l).collect();
    let new = leader_index(&spec, &alive).await;
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "the survivors waited for an election instead of taking over"
    );
    let mut kv = client(&spec, new).await;
    let r = put_eventually(&mut kv, "after", "handoff").await;
    assert!(r.header.unwrap().raft_term > old_term);
    for m in members.into_iter().flatten() {
        m.stop().await;
    }
}

/// Writes `bytes` to `addr` on a fresh connection and waits until the
/// member closes it (every case below must end in a close, not a crash).
fn send_and_wait_for_close(addr: std::net::SocketAddr, bytes: &[u8]) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    // The member may close before reading everything: a reset is a close too.
    let _ = s.write_all(bytes);
    let _ = s.shutdown(std::net::Shutdown::Write);
    let mut rest = Vec::new();
    let r = s.read_to_end(&mut rest);
    assert!(
        r.is_ok()
            || r.as_ref()
                .is_err_and(|e| e.kind() != std::io::ErrorKind::WouldBlock),
        "the member neither closed the connection nor failed it: {r:?}"
    );
    assert!(
        rest.is_empty(),
        "a member never writes to a peer connection"
    );
}

fn framed(body: &[u8]) -> Vec<u8> {
    let mut f = (body.len() as u32).to_le_bytes().to_vec();
    f.extend_from_slice(body);
    f
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_peer_frames_leave_every_member_serving() {
    use synod_protocols::raft::{Entry, EntryData, Message, Payload};
    use synod_server::peer::{Hello, PeerMsg, PROTOCOL_VERSION};
    let dir = tempfile::tempdir().unwrap();
    let ports: Vec<(u16, u16)> = (0..3).map(|_| (free_port(), free_port())).collect();
    let spec = ClusterSpec::local(dir.path().to_path_buf(), &ports);
    let members = start_cluster(&spec).await.unwrap();
    let mut kv = client(&spec, 0).await;
    put_eventually(&mut kv, "before", "1").await;

    // Speaking as member 2 (the hello passes), then sending an append whose
    // entries skip an index: a correct leader never sends it, and applying
    // it would break the log.
    let m2 = &spec.members[2];
    let hello = Hello::new(
        spec.cluster_id,
        2,
        m2.member_id,
        m2.name.clone(),
        m2.client_urls.clone(),
    );
    let gap = PeerMsg::Raft(Message::Append {
        term: 1_000,
        prev_index: 0,
        prev_term: 0,
        entries: vec![Entry {
            index: 5,
            term: 1_000,
            data: EntryData::Empty,
        }],
        commit: 5,
        held: 0,
    });
    // Every hello is addressed to the member it is sent to.
    let cases_for = |to: u64| -> Vec<(&str, Vec<u8>)> {
        let hello_bytes = framed(&bincode::serialize(&hello.to(to)).unwrap());
        let mut bad_append = hello_bytes.clone();
        // After the hello every frame repeats the identity the hello agreed.
        let as_member_2 = |msg: &PeerMsg| {
            framed(&bincode::serialize(&(spec.cluster_id, PROTOCOL_VERSION, 2u64, msg)).unwrap())
        };
        bad_append.extend(as_member_2(&gap));
        let mut garbage_after_hello = hello_bytes.clone();
        garbage_after_hello.extend(framed(&[0xff; 64]));
        // Well-formed, but the entry is no command this build can read: were it
        // appended and committed, every member would fail to apply it.
        let not_a_command = PeerMsg::Raft(Message::Append {
            term: 1_000,
            prev_index: 0,
            prev_term: 0,
            entries: vec![Entry {
                index: 1,
                term: 1_000,
                data: EntryData::App(Payload(vec![7, 1, 2, 3].into())),
            }],
            commit: 0,
            held: 0,
        });
        let mut bad_payload = hello_bytes.clone();
        bad_payload.extend(as_member_2(&not_a_command));
        // A well-formed heartbeat, but the frame says it is from member 1.
        let heartbeat = PeerMsg::Raft(Message::Heartbeat {
            term: 0,
            commit: 0,
            ctx: 0,
            held: 0,
        });
        let mut other_sender = hello_bytes.clone();
        other_sender.extend(framed(
            &bincode::serialize(&(spec.cluster_id, PROTOCOL_VERSION, 1u64, &heartbeat)).unwrap(),
        ));
        let mut huge_after_hello = hello_bytes.clone();
        huge_after_hello.extend((512u32 << 20).to_le_bytes());
        vec![
            ("a hello that claims 4 GiB", u32::MAX.to_le_bytes().to_vec()),
            ("a hello that is not one", framed(b"GET / HTTP/1.1\r\n\r\n")),
            ("a frame of garbage after the hello", garbage_after_hello),
            ("a 512 MiB frame that never comes", huge_after_hello),
            ("an append with a gap", bad_append),
            ("an entry that is not a command", bad_payload),
            ("a frame from another sender than the hello's", other_sender),
        ]
    };
    for m in 0..2 {
        for (what, bytes) in &cases_for(spec.members[m].member_id) {
            let addr = spec.members[m].peer;
            let bytes = bytes.clone();
            tokio::task::spawn_blocking(move || send_and_wait_for_close(addr, &bytes))
                .await
                .unwrap_or_else(|e| panic!("n{m}, {what}: {e}"));
        }
    }

    // Every member still serves, and the cluster still replicates.
    for i in 0..3 {
        let mut kv = client(&spec, i).await;
        put_eventually(&mut kv, &format!("after{i}"), "ok").await;
        assert_eq!(get(&mut kv, "before").await, Some(b"1".to_vec()));
    }
    for m in members {
        m.stop().await;
    }
}
