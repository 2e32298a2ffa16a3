//! Members of a replicated store, driven as a driver would drive them over a
//! perfect in-memory network: writes, reads, leader changes, leases and
//! recovery, scenario by scenario. (Faults are the simulator's business.)

use std::collections::VecDeque;
use synod_kv::replica::{
    Answer, Replica, ReplicaConfig, ReplicaError, ReplicaEvent, ReplicaInput, Request,
};
use synod_kv::*;
use synod_protocols::raft::{Disk, Message, Write};
use synod_protocols::{Envelope, Node, NodeId, Output};

type Out = Output<Write, Message, ReplicaEvent>;

struct Cluster {
    nodes: Vec<Option<Replica>>,
    disks: Vec<Disk>,
    events: Vec<(NodeId, ReplicaEvent)>,
    /// Whether each of `events` was marked early (may be reported before
    /// its output's writes are durable).
    early: Vec<bool>,
    queue: VecDeque<(NodeId, Envelope<Message>)>,
    next_id: u64,
}

impl Cluster {
    fn new(n: usize) -> Cluster {
        Cluster::with(n, |_| {})
    }

    /// `n` members, each configured by `tune` too.
    fn with(n: usize, tune: impl Fn(&mut ReplicaConfig)) -> Cluster {
        let peers: Vec<NodeId> = (0..n as NodeId).collect();
        Cluster {
            nodes: (0..n as NodeId)
                .map(|i| {
                    let mut cfg = ReplicaConfig::new(i, peers.clone());
                    tune(&mut cfg);
                    Some(Replica::new(cfg, &Disk::default(), 11 + i))
                })
                .collect(),
            disks: vec![Disk::default(); n],
            events: Vec::new(),
            early: Vec::new(),
            queue: VecDeque::new(),
            next_id: 1,
        }
    }

    fn node(&self, id: NodeId) -> &Replica {
        self.nodes[id as usize].as_ref().expect("up")
    }

    /// Persist, then send, then report: the driver's contract.
    fn handle(&mut self, id: NodeId, out: Out) {
        for w in &out.writes {
            <Replica as Node>::apply_write(&mut self.disks[id as usize], w);
        }
        self.queue.extend(out.msgs.into_iter().map(|m| (id, m)));
        assert!(out.early_events <= out.events.len());
        let n = out.events.len();
        self.early.extend((0..n).map(|i| i < out.early_events));
        self.events.extend(out.events.into_iter().map(|e| (id, e)));
    }

    fn settle(&mut self) {
        while let Some((from, env)) = self.queue.pop_front() {
            let to = env.to;
            let Some(node) = self.nodes[to as usize].as_mut() else {
                continue;
            };
            let mut out = Out::default();
            node.step(0, from, env.msg, &mut out);
            self.handle(to, out);
        }
    }

    fn tick(&mut self) {
        for id in 0..self.nodes.len() as NodeId {
            if let Some(node) = self.nodes[id as usize].as_mut() {
                let mut out = Out::default();
                node.tick(0, &mut out);
                self.handle(id, out);
            }
        }
        self.settle();
    }

    fn leader(&mut self) -> NodeId {
        for _ in 0..200 {
            let leaders: Vec<NodeId> = (0..self.nodes.len() as NodeId)
                .filter(|i| {
                    self.nodes[*i as usize]
                        .as_ref()
                        .is_some_and(|n| n.is_leader())
                })
                .collect();
            if let [l] = leaders[..] {
                return l;
            }
            self.tick();
        }
        panic!("no leader");
    }

    /// Sends a request to `to` and runs the cluster until it is answered.
    fn ask(&mut self, to: NodeId, req: Request) -> Result<Answer, ReplicaError> {
        let id = self.next_id;
        self.next_id += 1;
        let mut out = Out::default();
        self.nodes[to as usize].as_mut().expect("up").input(
            0,
            ReplicaInput::Client { id, req },
            &mut out,
        );
        self.handle(to, out);
        for _ in 0..50 {
            self.settle();
            let answer = self.events.iter().find_map(|(_, e)| match e {
                ReplicaEvent::Response { id: i, result } if *i == id => Some(result.clone()),
                _ => None,
            });
            if let Some(a) = answer {
                return a;
            }
            self.tick();
        }
        panic!("request {id} never answered");
    }
}

fn put(k: &str, v: &str) -> Request {
    Request::Write(Command::Put(PutRequest {
        key: k.into(),
        value: v.into(),
        ..PutRequest::default()
    }))
}

fn get(k: &str) -> Request {
    Request::Read(RangeRequest {
        key: k.into(),
        ..RangeRequest::default()
    })
}

fn value(a: &Result<Answer, ReplicaError>) -> Option<Vec<u8>> {
    match a {
        Ok(Answer::Read { resp, .. }) => resp.kvs.first().map(|kv| kv.value.clone()),
        other => panic!("not a read answer: {other:?}"),
    }
}

#[test]
fn writes_go_through_the_leader_and_reach_every_member() {
    let mut c = Cluster::new(3);
    let l = c.leader();
    let f = (l + 1) % 3;
    assert_eq!(
        c.ask(f, put("k", "v")),
        Err(ReplicaError::NotLeader { hint: Some(l) })
    );
    match c.ask(l, put("k", "v")) {
        Ok(Answer::Write { revision, .. }) => assert_eq!(revision, 2),
        other => panic!("{other:?}"),
    }
    assert_eq!(value(&c.ask(l, get("k"))), Some(b"v".to_vec()));
    // A follower serves a linearizable read itself, at the leader's read
    // index: it sees the write it may not have applied when asked.
    assert_eq!(value(&c.ask(f, get("k"))), Some(b"v".to_vec()));
    // Every member applied the same change at the same revision.
    for _ in 0..3 {
        c.tick();
    }
    for id in 0..3 {
        assert_eq!(c.node(id).store().hash(), c.node(l).store().hash());
        assert!(c.events.iter().any(|(n, e)| *n == id
            && matches!(e, ReplicaEvent::Applied { revision: 2, events, .. } if events.len() == 1)));
    }
    // The store's refusals come back as such.
    assert_eq!(
        c.ask(l, Request::Write(Command::Put(PutRequest::default()))),
        Err(ReplicaError::Kv(Error::EmptyKey))
    );
}

#[test]
fn a_member_answers_the_write_it_forwarded_from_its_own_log() {
    let mut c = Cluster::new(3);
    let l = c.leader();
    let (f, other) = ((l + 1) % 3, (l + 2) % 3);
    // What a follower passes to its leader: the write, tagged with its own
    // id and request id.
    let Request::Write(cmd) = put("k", "v") else {
        unreachable!()
    };
    let tagged = Command::Tagged {
        by: f,
        id: 77,
        cmd: Box::new(cmd),
    };
    let leaders = c.ask(l, Request::Write(tagged));
    assert!(matches!(leaders, Ok(Answer::Write { revision: 2, .. })));
    for _ in 0..3 {
        c.tick();
    }
    // The follower answers request 77 from its own apply, exactly as the
    // leader answered it (it needs no answer from a leader that may be
    // dead); no other member answers it.
    let answers = |c: &Cluster, member: NodeId| -> Vec<Result<Answer, ReplicaError>> {
        c.events
            .iter()
            .filter_map(|(n, e)| match e {
                ReplicaEvent::Response { id: 77, result } if *n == member => Some(result.clone()),
                _ => None,
            })
            .collect()
    };
    assert_eq!(answers(&c, f), vec![leaders]);
    assert!(answers(&c, other).is_empty());
    assert_eq!(value(&c.ask(other, get("k"))), Some(b"v".to_vec()));
}

/// Whether each event `pick` selects among `member`'s was marked early (may
/// be reported before its output's writes are durable).
fn early_of(c: &Cluster, member: NodeId, pick: impl Fn(&ReplicaEvent) -> bool) -> Vec<bool> {
    c.events
        .iter()
        .zip(&c.early)
        .filter(|((n, e), _)| *n == member && pick(e))
        .map(|(_, early)| *early)
        .collect()
}

fn answer_to(id: u64) -> impl Fn(&ReplicaEvent) -> bool {
    move |e| matches!(e, ReplicaEvent::Response { id: i, .. } if *i == id)
}

fn applied(revision: i64) -> impl Fn(&ReplicaEvent) -> bool {
    move |e| matches!(e, ReplicaEvent::Applied { revision: r, .. } if *r == revision)
}

/// What a member applies was acknowledged durable by a quorum, its leader's
/// copy written by an earlier output: the answers and reports need not wait
/// for the sync of the output that applies it, at the leader or elsewhere.
#[test]
fn what_a_quorum_made_durable_is_reported_early() {
    let mut c = Cluster::new(3);
    let l = c.leader();
    let f = (l + 1) % 3;
    let Request::Write(cmd) = put("k", "v") else {
        unreachable!()
    };
    let tagged = Command::Tagged {
        by: f,
        id: 78,
        cmd: Box::new(cmd),
    };
    let asked = c.next_id;
    c.ask(l, Request::Write(tagged)).expect("written");
    for _ in 0..3 {
        c.tick();
    }
    assert_eq!(
        early_of(&c, l, applied(2)),
        vec![true],
        "the leader's apply"
    );
    assert_eq!(
        early_of(&c, l, answer_to(asked)),
        vec![true],
        "the leader's answer"
    );
    assert_eq!(
        early_of(&c, f, applied(2)),
        vec![true],
        "the follower's apply"
    );
    assert_eq!(
        early_of(&c, f, answer_to(78)),
        vec![true],
        "the follower's answer"
    );
}

/// A snapshot image leaves only once its output is durable, at the leader
/// and elsewhere, although the applies before it go early: the log is cut
/// behind it when it comes back encoded. The simulator runs the same rule.
#[test]
fn a_snapshot_image_waits_for_the_sync() {
    let mut c = Cluster::with(3, |cfg| {
        cfg.raft.snapshot_every = 2;
        cfg.raft.snapshot_log_percent = 0;
        cfg.encode_snapshots_elsewhere = true;
    });
    let l = c.leader();
    let f = (l + 1) % 3;
    for i in 0..6 {
        c.ask(l, put(&format!("k{i}"), "v")).expect("written");
    }
    for _ in 0..3 {
        c.tick();
    }
    let image = |e: &ReplicaEvent| matches!(e, ReplicaEvent::SnapshotImage { .. });
    for (who, m) in [("the leader", l), ("a follower", f)] {
        let early = early_of(&c, m, image);
        assert!(!early.is_empty(), "{who} took no snapshot");
        assert!(early.iter().all(|e| !e), "{who} handed an image out early");
        assert!(
            early_of(&c, m, |e| matches!(e, ReplicaEvent::Applied { .. }))
                .iter()
                .any(|e| *e),
            "{who} applied nothing early"
        );
    }
}

/// A leader that is a quorum alone commits a write in the very output that
/// writes it: its answer must wait for that output's sync.
#[test]
fn a_sole_voter_reports_nothing_early() {
    let mut c = Cluster::new(1);
    let l = c.leader();
    let asked = c.next_id;
    c.ask(l, put("k", "v")).expect("written");
    assert_eq!(early_of(&c, l, applied(2)), vec![false], "the apply");
    assert_eq!(early_of(&c, l, answer_to(asked)), vec![false], "the answer");
    let read = c.next_id;
    assert_eq!(value(&c.ask(l, get("k"))), Some(b"v".to_vec()));
    assert_eq!(early_of(&c, l, answer_to(read)), vec![false], "the read");
}

#[test]
fn a_new_leader_serves_everything_the_old_one_acknowledged() {
    let mut c = Cluster::new(3);
    let l = c.leader();
    for i in 0..5 {
        c.ask(l, put(&format!("k{i}"), "v")).unwrap();
    }
    c.nodes[l as usize] = None;
    c.queue.clear();
    let l2 = c.leader();
    assert_ne!(l, l2);
    let r = c.ask(
        l2,
        Request::Read(RangeRequest {
            key: b"k".to_vec(),
            range_end: b"l".to_vec(),
            ..RangeRequest::default()
        }),
    );
    match r {
        Ok(Answer::Read { resp, revision, .. }) => {
            assert_eq!(resp.count, 5);
            assert_eq!(revision, 6);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn the_leader_revokes_a_lease_nobody_keeps_alive() {
    let mut c = Cluster::new(3);
    let l = c.leader();
    let lease = match c.ask(l, Request::Write(Command::LeaseGrant { id: 0, ttl: 2 })) {
        Ok(Answer::Write {
            resp: CommandResponse::LeaseGrant { id, .. },
            ..
        }) => id,
        other => panic!("{other:?}"),
    };
    c.ask(
        l,
        Request::Write(Command::Put(PutRequest {
            key: b"session".to_vec(),
            value: b"alive".to_vec(),
            lease,
            ..PutRequest::default()
        })),
    )
    .unwrap();
    // Kept alive every second (10 ticks of 100 ms), it outlives its TTL.
    for _ in 0..4 {
        for _ in 0..10 {
            c.tick();
        }
        assert_eq!(
            c.ask(l, Request::KeepAlive { lease }),
            Ok(Answer::KeepAlive { ttl: 2 })
        );
    }
    assert_eq!(value(&c.ask(l, get("session"))), Some(b"alive".to_vec()));
    // Left alone, it is revoked through the log: gone on every member.
    for _ in 0..25 {
        c.tick();
    }
    assert_eq!(value(&c.ask(l, get("session"))), None);
    for id in 0..3 {
        assert!(c.node(id).store().lease(lease).is_none(), "member {id}");
        assert!(c
            .node(id)
            .store()
            .range(&RangeRequest {
                key: b"session".to_vec(),
                ..RangeRequest::default()
            })
            .unwrap()
            .kvs
            .is_empty());
    }
    assert_eq!(
        c.ask(l, Request::KeepAlive { lease }),
        Err(ReplicaError::Kv(Error::LeaseNotFound(lease)))
    );
}

/// TimeToLive reports whole seconds of the TTL left, truncated as etcd
/// does: a 60 s lease just granted has 59 s left, not the deadline's margin.
#[test]
fn time_to_live_counts_down_from_just_under_the_ttl() {
    let mut c = Cluster::new(3);
    let l = c.leader();
    let lease = match c.ask(l, Request::Write(Command::LeaseGrant { id: 0, ttl: 60 })) {
        Ok(Answer::Write {
            resp: CommandResponse::LeaseGrant { id, .. },
            ..
        }) => id,
        other => panic!("{other:?}"),
    };
    let left = |c: &mut Cluster| match c.ask(l, Request::TimeToLive { lease }) {
        Ok(Answer::TimeToLive {
            remaining, granted, ..
        }) => (remaining, granted),
        other => panic!("{other:?}"),
    };
    assert_eq!(left(&mut c), (59, 60), "just granted");
    for _ in 0..10 {
        c.tick(); // 100 ms each
    }
    assert_eq!(left(&mut c), (58, 60), "a second later");
    assert_eq!(
        c.ask(l, Request::KeepAlive { lease }),
        Ok(Answer::KeepAlive { ttl: 60 })
    );
    assert_eq!(left(&mut c), (59, 60), "just kept alive");
}

#[test]
fn a_member_recovers_its_store_from_disk() {
    let mut c = Cluster::new(3);
    let l = c.leader();
    for i in 0..20 {
        c.ask(l, put(&format!("k{}", i % 4), &i.to_string()))
            .unwrap();
    }
    for _ in 0..3 {
        c.tick();
    }
    let f = (l + 1) % 3;
    let before = c.node(f).store().hash();
    let cfg = ReplicaConfig::new(f, vec![0, 1, 2]);
    let recovered: Replica = Replica::new(cfg, &c.disks[f as usize], 99);
    assert_eq!(recovered.store().hash(), before);
}
