//! Scenarios on a hand-driven network: every message is delivered when the
//! test says so, and writes are applied to each node's disk at once.

use super::*;
use crate::sansio::Envelope;

struct Net {
    nodes: Vec<Option<MultiPaxosNode<u64>>>,
    disks: Vec<Disk<u64>>,
    queue: Vec<(NodeId, Envelope<Msg<u64>>)>,
    /// Per node: every slot it applied, in order.
    applied: Vec<Vec<(Slot, Command<u64>)>>,
    /// Per node: the slots of the snapshots it installed from peers.
    restored: Vec<Vec<Slot>>,
    /// Per node: the reads it may serve, in order.
    reads: Vec<Vec<u64>>,
}

impl Net {
    fn new(n: usize) -> Net {
        Net::with_spares(n, 0)
    }

    /// Members `0..n` and `spares` nodes after them that are not members.
    fn with_spares(n: usize, spares: usize) -> Net {
        let disks = vec![Disk::default(); n + spares];
        let nodes = (0..n + spares)
            .map(|i| {
                Some(MultiPaxosNode::new(
                    Config::new(i as NodeId, n),
                    &disks[i],
                    i as u64,
                ))
            })
            .collect();
        let n = n + spares;
        Net {
            nodes,
            disks,
            queue: Vec::new(),
            applied: vec![Vec::new(); n],
            restored: vec![Vec::new(); n],
            reads: vec![Vec::new(); n],
        }
    }

    fn absorb(&mut self, id: NodeId, out: Out<u64>) {
        for w in &out.writes {
            self.disks[id as usize].apply(w);
        }
        for e in out.events {
            match e {
                Event::Applied { slot, cmd } => self.applied[id as usize].push((slot, cmd)),
                Event::Restored(snap) => self.restored[id as usize].push(snap.slot),
                Event::ReadReady { id: read } => self.reads[id as usize].push(read),
                _ => {}
            }
        }
        self.queue.extend(out.msgs.into_iter().map(|m| (id, m)));
    }

    fn node(&mut self, id: NodeId) -> &mut MultiPaxosNode<u64> {
        self.nodes[id as usize].as_mut().expect("node is up")
    }

    /// Ticks `id` until it campaigns, and delivers everything.
    fn elect(&mut self, id: NodeId) {
        for _ in 0..100 {
            let mut out = Out::default();
            self.node(id).tick(&mut out);
            self.absorb(id, out);
            if !self.queue.is_empty() {
                break;
            }
        }
        self.deliver_all();
        assert!(self.node(id).is_leader(), "n{id} did not win");
    }

    fn propose(&mut self, id: NodeId, v: u64) -> bool {
        let mut out = Out::default();
        let took = self.node(id).propose(v, &mut out);
        self.absorb(id, out);
        took
    }

    fn reconfigure(&mut self, id: NodeId, members: &[NodeId]) -> Result<(), ReconfigError> {
        let mut out = Out::default();
        let r = self
            .node(id)
            .reconfigure(members.iter().copied().collect(), &mut out);
        self.absorb(id, out);
        r
    }

    /// Delivers queued messages, `keep` deciding which (the others are
    /// dropped), until none is left.
    fn deliver(&mut self, mut keep: impl FnMut(NodeId, NodeId) -> bool) {
        while !self.queue.is_empty() {
            let (from, env) = self.queue.remove(0);
            if !keep(from, env.to) || self.nodes[env.to as usize].is_none() {
                continue;
            }
            let mut out = Out::default();
            self.node(env.to).step(from, env.msg, &mut out);
            self.absorb(env.to, out);
        }
    }

    fn deliver_all(&mut self) {
        self.deliver(|_, _| true);
    }

    fn crash(&mut self, id: NodeId) {
        self.nodes[id as usize] = None;
        self.queue.retain(|(from, env)| *from != id && env.to != id);
    }

    fn restart(&mut self, id: NodeId) {
        let cfg = *self
            .nodes
            .iter()
            .flatten()
            .next()
            .expect("a node up")
            .config();
        let cfg = Config { id, ..cfg };
        let node = MultiPaxosNode::new(cfg, &self.disks[id as usize], 100 + id);
        self.nodes[id as usize] = Some(node);
    }

    /// The leader's heartbeat round, delivered.
    fn heartbeat(&mut self, id: NodeId) {
        self.heartbeat_but(id, NodeId::MAX);
    }

    /// The leader's heartbeat round, delivered to every node but `cut`.
    fn heartbeat_but(&mut self, id: NodeId, cut: NodeId) {
        let mut out = Out::default();
        self.node(id).tick(&mut out);
        self.absorb(id, out);
        self.deliver(|from, to| from != cut && to != cut);
    }
}

#[test]
fn a_leader_fills_slots_in_order_and_everyone_learns_them() {
    let mut net = Net::new(3);
    net.elect(0);
    for v in [10, 20, 30] {
        assert!(net.propose(0, v));
    }
    assert!(!net.propose(1, 99), "a follower does not propose");
    net.deliver_all();
    net.heartbeat(0);
    let want: Vec<_> = [10, 20, 30]
        .iter()
        .enumerate()
        .map(|(i, v)| (i as Slot + 1, Command::App(*v)))
        .collect();
    for id in 0..3 {
        assert_eq!(net.applied[id], want, "n{id}");
    }
}

/// Slot 1 was accepted by n0 and n1 only when n0, the leader, died. The
/// next leader's phase 1 finds it and chooses it again: a value a majority
/// may have chosen is never replaced.
#[test]
fn a_new_leader_carries_on_what_a_majority_may_have_chosen() {
    let mut net = Net::new(3);
    net.elect(0);
    net.propose(0, 7);
    net.deliver(|_, to| to == 1);
    net.crash(0);
    net.elect(2);
    net.propose(2, 8);
    net.deliver_all();
    net.heartbeat(2);
    assert_eq!(net.applied[2][0], (1, Command::App(7)));
    assert_eq!(net.applied[2][1], (2, Command::App(8)));
    assert_eq!(net.applied[1], net.applied[2]);
}

/// A slot nobody in the new majority accepted, below one somebody did,
/// becomes a no-op: no gap stays open.
#[test]
fn a_gap_is_filled_with_a_noop() {
    let mut net = Net::new(3);
    net.elect(0);
    net.propose(0, 1);
    net.propose(0, 2);
    // Slot 1's accept reaches nobody; slot 2's reaches n1.
    let mut first = true;
    net.deliver(|_, to| {
        let keep = !first && to == 1;
        if to == 1 {
            first = false;
        }
        keep
    });
    net.crash(0);
    net.elect(1);
    net.heartbeat(1);
    assert_eq!(
        net.applied[1],
        vec![(1, Command::Noop), (2, Command::App(2))]
    );
}

/// A node that restarts keeps its promise: an old leader's accept, arriving
/// late, is refused.
#[test]
fn a_promise_survives_a_restart() {
    let mut net = Net::new(3);
    net.elect(0);
    net.elect(1);
    net.crash(2);
    net.restart(2);
    let old = Ballot { round: 1, node: 0 };
    let mut out = Out::default();
    let cmds = vec![Command::App(5)];
    net.node(2).step(
        0,
        Msg::Accept {
            ballot: old,
            first: 1,
            cmds,
            commit: 0,
        },
        &mut out,
    );
    assert!(
        matches!(out.msgs[0].msg, Msg::Nack { .. }),
        "{:?}",
        out.msgs
    );
}

/// A follower that missed chosen slots gets them from the leader.
#[test]
fn a_lagging_follower_catches_up() {
    let mut net = Net::new(3);
    net.elect(0);
    for v in 1..=5 {
        net.propose(0, v);
    }
    net.deliver(|_, to| to != 2);
    net.heartbeat(0);
    net.heartbeat(0);
    assert_eq!(net.applied[2].len(), 5);
    assert_eq!(net.applied[2], net.applied[0]);
}

/// A leader that meets a higher ballot steps down.
#[test]
fn an_old_leader_steps_down() {
    let mut net = Net::new(3);
    net.elect(0);
    net.elect(1);
    assert!(!net.node(0).is_leader());
    assert!(!net.propose(0, 3));
    assert!(net.propose(1, 3));
}

/// `id` compacts everything it applied.
fn compact(net: &mut Net, id: NodeId) {
    let slot = net.node(id).applied();
    let mut out = Out::default();
    net.node(id).compact(slot, Payload::encode(&slot), &mut out);
    net.absorb(id, out);
    assert_eq!(net.node(id).compacted(), slot);
    assert_eq!(net.disks[id as usize].compacted(), slot);
}

/// A follower that missed slots the leader has compacted gets the
/// snapshot, then the slots after it.
#[test]
fn a_follower_behind_the_snapshot_gets_it() {
    let mut net = Net::new(3);
    net.elect(0);
    for v in 1..=5 {
        net.propose(0, v);
    }
    net.deliver(|_, to| to != 2);
    net.heartbeat_but(0, 2);
    compact(&mut net, 0);
    net.propose(0, 6);
    net.deliver_all();
    net.heartbeat(0);
    net.heartbeat(0);
    assert_eq!(net.restored[2], vec![5]);
    assert_eq!(net.applied[2], vec![(6, Command::App(6))]);
    assert_eq!(net.node(2).learned_upto(), 6);
}

/// Right after the leader compacts, an answer from a follower that
/// accepted the compacted slots may still report the learned prefix it had
/// before (it was on its way, or sent before the commit index reached it).
/// That follower needs no snapshot: commit indexes tell it what it
/// accepted is chosen.
#[test]
fn a_follower_that_accepted_the_compacted_slots_is_not_sent_the_snapshot() {
    let mut net = Net::new(3);
    net.elect(0);
    for v in 1..=5 {
        net.propose(0, v);
    }
    net.deliver_all();
    compact(&mut net, 0);
    let ballot = net.node(0).promised();
    let mut out = Out::default();
    let stale = Msg::HeartbeatResp {
        ballot,
        learned: 0,
        round: 0,
    };
    net.node(0).step(2, stale, &mut out);
    assert!(
        !out.msgs.iter().any(|m| matches!(m.msg, Msg::Snapshot(_))),
        "{:?}",
        out.msgs
    );
    net.absorb(0, out);
    net.deliver_all();
    net.heartbeat(0);
    assert_eq!(net.node(2).learned_upto(), 5);
    assert!(net.restored[2].is_empty());
    assert_eq!(net.applied[2], net.applied[0]);
}

/// n2 learned nothing when n0 and n1 chose slots 1–3 and compacted them.
/// Campaigning after n0's crash, it hears of the slots only through n1's
/// snapshot, which n1's promise carries: n2 installs it and proposes after
/// it, instead of putting no-ops where commands were chosen.
#[test]
fn a_lagging_candidate_takes_the_snapshot_from_a_promise() {
    let mut net = Net::new(3);
    net.elect(0);
    for v in 1..=3 {
        net.propose(0, v);
    }
    net.deliver(|_, to| to != 2);
    net.heartbeat_but(0, 2);
    compact(&mut net, 1);
    net.crash(0);
    net.elect(2);
    assert_eq!(net.restored[2], vec![3]);
    assert!(net.propose(2, 9));
    net.deliver_all();
    net.heartbeat(2);
    assert_eq!(net.applied[2], vec![(4, Command::App(9))]);
    assert_eq!(net.applied[1].last(), Some(&(4, Command::App(9))));
}

/// A node booted from a compacted disk starts after the snapshot.
#[test]
fn a_restart_boots_from_the_snapshot() {
    let mut net = Net::new(3);
    net.elect(0);
    for v in 1..=4 {
        net.propose(0, v);
    }
    net.deliver_all();
    net.heartbeat(0);
    compact(&mut net, 1);
    net.crash(1);
    net.restart(1);
    let node = net.node(1);
    assert_eq!(node.compacted(), 4);
    assert_eq!((node.applied(), node.learned_upto()), (4, 4));
    assert_eq!(node.learned().count(), 0);
}

fn members(ids: &[NodeId]) -> Members {
    ids.iter().copied().collect()
}

/// n3, a spare, is added. The change comes into force once the leader's
/// no-ops fill the window; from then on a slot needs three of the four
/// members, and n3 accepts and learns like the others.
#[test]
fn an_added_member_counts_after_the_window() {
    let mut net = Net::with_spares(3, 1);
    net.elect(0);
    assert_eq!(net.reconfigure(0, &[0, 1, 2, 3]), Ok(()));
    net.deliver_all();
    net.heartbeat(0);
    let window = Config::new(0, 3).window;
    let node = net.node(0);
    assert_eq!(*node.members(), members(&[0, 1, 2, 3]));
    assert_eq!(node.learned_upto(), window, "the change and its no-ops");
    assert_eq!(*node.members_at(window + 1), members(&[0, 1, 2, 3]));
    assert_eq!(net.node(3).learned_upto(), window);
    // Two of four members down: nothing is chosen.
    net.crash(1);
    net.crash(2);
    assert!(net.propose(0, 5));
    net.deliver_all();
    assert_eq!(net.node(0).learned_upto(), window);
    // n1 back: three of four.
    net.restart(1);
    net.heartbeat(0);
    net.heartbeat(0);
    assert_eq!(net.node(0).learned_upto(), window + 1);
    assert_eq!(net.applied[3].last(), Some(&(window + 1, Command::App(5))));
}

/// The leader removes itself: once the change is in force it steps down,
/// and never campaigns again; the two members left carry on.
#[test]
fn a_leader_that_removes_itself_steps_down() {
    let mut net = Net::new(3);
    net.elect(0);
    assert_eq!(net.reconfigure(0, &[1, 2]), Ok(()));
    net.deliver_all();
    net.heartbeat(0);
    assert!(!net.node(0).is_leader());
    for _ in 0..100 {
        let mut out = Out::default();
        net.node(0).tick(&mut out);
        assert!(out.msgs.is_empty(), "a former member campaigned");
    }
    net.elect(1);
    assert!(net.propose(1, 7));
    net.deliver_all();
    net.heartbeat(1);
    assert_eq!(
        net.applied[2].last().map(|(_, c)| c),
        Some(&Command::App(7))
    );
}

/// One change at a time, of one member.
#[test]
fn changes_come_one_member_at_a_time() {
    let mut net = Net::with_spares(3, 2);
    net.elect(0);
    net.heartbeat(0);
    assert_eq!(
        net.reconfigure(0, &[0, 1, 2, 3, 4]),
        Err(ReconfigError::NotOneMember)
    );
    assert_eq!(net.reconfigure(0, &[0]), Err(ReconfigError::NotOneMember));
    assert_eq!(
        net.reconfigure(1, &[0, 1, 2, 3]),
        Err(ReconfigError::NotLeader(Some(0)))
    );
    assert_eq!(net.reconfigure(0, &[0, 1, 2, 3]), Ok(()));
    assert_eq!(
        net.reconfigure(0, &[0, 1, 2, 3, 4]),
        Err(ReconfigError::Pending)
    );
    net.deliver_all();
    net.heartbeat(0);
    assert_eq!(net.reconfigure(0, &[0, 1, 2, 3, 4]), Ok(()));
}

/// n0 proposes adding n3 and dies before anyone learns the change. n1 is
/// elected by the old members, finds the change in phase 1 and chooses it
/// again with the window's no-ops. Before it proposes after the window,
/// where the new members count, it asks n3, whom it never asked, for its
/// promise.
#[test]
fn a_leader_asks_the_members_a_change_brings() {
    let mut net = Net::with_spares(3, 1);
    net.elect(0);
    assert_eq!(net.reconfigure(0, &[0, 1, 2, 3]), Ok(()));
    net.deliver(|from, _| from == 0);
    net.crash(0);
    assert_eq!(net.node(1).learned_upto(), 0);
    net.elect(1);
    assert!(net.propose(1, 9));
    net.deliver_all();
    net.heartbeat(1);
    let window = Config::new(0, 3).window;
    assert_eq!(net.node(1).learned_upto(), window + 1);
    assert_eq!(*net.node(1).members_at(window + 1), members(&[0, 1, 2, 3]));
    assert_eq!(net.applied[3].last(), Some(&(window + 1, Command::App(9))));
}

fn read(net: &mut Net, id: NodeId, read: u64) -> bool {
    let mut out = Out::default();
    let took = net.node(id).read_index(read, &mut out);
    net.absorb(id, out);
    took
}

/// A read waits for a heartbeat round that a majority answers, and for the
/// slots the leader had learned to be applied; reads that arrive while a
/// round is in flight share the next one.
#[test]
fn a_read_waits_for_a_round_of_heartbeats() {
    let mut net = Net::new(3);
    net.elect(0);
    net.propose(0, 5);
    net.deliver_all();
    assert!(read(&mut net, 0, 1));
    assert!(read(&mut net, 0, 2));
    assert!(!read(&mut net, 1, 3), "a follower takes no reads");
    assert!(net.reads[0].is_empty(), "served before the round came back");
    let rounds = net
        .queue
        .iter()
        .filter(|(_, e)| matches!(e.msg, Msg::Heartbeat { .. }))
        .count();
    assert_eq!(
        rounds, 2,
        "one round in flight; the second read waits for the next"
    );
    net.deliver_all();
    assert_eq!(net.reads[0], vec![1, 2]);
}

/// n0 is cut off, and n1 takes over without its knowing. n0's read gets
/// no answer to its round, and n0 steps down once it hears of n1's ballot:
/// the read is never served.
#[test]
fn a_leader_cut_off_serves_no_reads() {
    let mut net = Net::new(3);
    net.elect(0);
    let cut = |from: NodeId, to: NodeId| from != 0 && to != 0;
    for _ in 0..100 {
        let mut out = Out::default();
        net.node(1).tick(&mut out);
        net.absorb(1, out);
        net.deliver(cut);
        if net.node(1).is_leader() {
            break;
        }
    }
    assert!(net.node(1).is_leader() && net.node(0).is_leader());
    assert!(net.propose(1, 8));
    net.deliver(cut);
    assert!(read(&mut net, 0, 1));
    net.deliver(cut);
    assert!(net.reads[0].is_empty());
    net.heartbeat(0);
    assert!(!net.node(0).is_leader());
    assert!(net.reads[0].is_empty());
}
