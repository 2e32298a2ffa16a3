//! The seeds' stories as named runs to look at (`synod story NAME --html F`):
//! each is one algorithm under fixed faults, recorded for a picture. The
//! write-once ones are [`crate::scenarios`] shown on the algorithm they are
//! about; the Raft ones run the Raft key-value model with one client.
//!
//! Two stories need a fault between two particular messages, which no fixed
//! time can hit for every seed: they drive the run themselves
//! ([`Plot::Scripted`]), step until the run reaches a state, and strike then.
//! So every story tells the same tale whatever the seed.

use crate::faults::{NodeFault, Schedule};
use crate::models::commit::CommitModel;
use crate::models::multipaxos::MultiPaxosModel;
use crate::models::raft::RaftModel;
use crate::models::wal_disk::WalBacked;
use crate::report::RunReport;
use crate::runner::Algo;
use crate::scenarios::{self, crash_for_good};
use crate::sim::{SimConfig, Simulation};
use crate::FaultSet;
use synod_protocols::commit::{
    three_pc::ThreePcNode, two_pc::TwoPcNode, CommitEvent, CommitInput, CommitNode, Layout, Log,
    VotePlan,
};
use synod_protocols::kv::{KvInput, KvOp, KvRequest};
use synod_protocols::multipaxos::{Config as MpConfig, MpKvNode};
use synod_protocols::raft::{Disk, KvNode, RaftConfig, RaftNode, Role};
use synod_protocols::{Instant, Node, NodeId, MS};

/// What a story runs.
pub enum Plot {
    /// A write-once scenario, on one algorithm.
    WriteOnce { scenario: &'static str, algo: Algo },
    /// Raft with `nodes` voters and one client, under `schedule`; the
    /// client invokes operations for `for_ms` (the fault phase), then
    /// finishes the one in flight.
    Raft {
        nodes: usize,
        schedule: fn() -> Schedule,
        for_ms: u64,
    },
    /// Atomic commit (`algo`: 2PC or 3PC): n0 coordinates, n1..n3 take
    /// part and always vote yes, under `schedule`.
    Commit {
        algo: Algo,
        schedule: fn() -> Schedule,
    },
    /// A run that strikes on cue: see the module docs.
    Scripted(fn(u64) -> RunReport),
}

/// How a story's run ends, as the story is told.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ending {
    /// Every node that is up learns the one value (or outcome).
    Decided,
    /// The run cannot finish: some node waits for ever.
    Stuck,
    /// A safety property breaks: the design the story is about is unsafe.
    Violated,
}

impl Ending {
    /// How `report`'s run ended.
    pub fn of(report: &RunReport) -> Ending {
        match (report.violation_count, report.terminated) {
            (0, true) => Ending::Decided,
            (0, false) => Ending::Stuck,
            _ => Ending::Violated,
        }
    }

    pub fn word(self) -> &'static str {
        match self {
            Ending::Decided => "decided",
            Ending::Stuck => "stuck",
            Ending::Violated => "VIOLATED",
        }
    }
}

pub struct Story {
    pub name: &'static str,
    /// One line: what to look for in the picture.
    pub about: &'static str,
    /// How its run ends (checked by the tests, and by `synod story`).
    pub ends: Ending,
    pub plot: Plot,
    /// Written under the picture: what the run itself cannot show.
    pub notes: &'static [&'static str],
}

/// Every story, in the order a reader meets them.
pub const STORIES: &[Story] = &[
    Story {
        name: "coordinator-crash",
        about: "One coordinator decides for everyone; when it crashes, nobody can decide.",
        ends: Ending::Stuck,
        plot: Plot::WriteOnce {
            scenario: "coordinator-crash",
            algo: Algo::Coordinator,
        },
        notes: &[],
    },
    Story {
        name: "split-brain",
        about: "Replace a silent coordinator by timeout, split the network: two coordinators decide two values.",
        ends: Ending::Violated,
        plot: Plot::WriteOnce {
            scenario: "split-brain",
            algo: Algo::Failover,
        },
        notes: &[
            "{n0 n1 n2} stop hearing n4 and follow n2; n4 still leads {n3 n4}. Each side decides what reached it first.",
            "A timeout cannot tell a dead coordinator from an unreachable one: picking the new one is itself a consensus problem.",
        ],
    },
    Story {
        name: "majority-race",
        about: "Majority voting on seven nodes: red and blue race, every node votes for the first it hears.",
        ends: Ending::Decided,
        plot: Plot::WriteOnce {
            scenario: "majority-race",
            algo: Algo::Majority,
        },
        notes: &[],
    },
    Story {
        name: "three-three",
        about: "Majority voting on seven nodes splits 3-3; when the network heals, the seventh breaks the tie.",
        ends: Ending::Decided,
        plot: Plot::WriteOnce {
            scenario: "three-three",
            algo: Algo::Majority,
        },
        notes: &[],
    },
    Story {
        name: "last-voter-crash",
        about: "The seventh voter crashes: 3-3 can never become 4, and nothing is decided.",
        ends: Ending::Stuck,
        plot: Plot::WriteOnce {
            scenario: "last-voter-crash",
            algo: Algo::Majority,
        },
        notes: &[
            "What did n6 do before it crashed? The six left cannot know, and each answer forbids a different move:",
            "• it voted red, and told someone: red has 4 of 7 and is decided, so blue may never win;",
            "• it voted blue: the same, for blue;",
            "• it voted for nothing: then a tie-break would be safe. Votes cannot be taken back, so all wait for n6.",
        ],
    },
    Story {
        name: "paxos-duel",
        about: "Two Paxos proposers duel with ballots; exactly one value is chosen.",
        ends: Ending::Decided,
        plot: Plot::WriteOnce {
            scenario: "paxos-duel",
            algo: Algo::Paxos,
        },
        notes: &[],
    },
    Story {
        name: "paxos-last-voter",
        about: "The same lost voter does not stop Paxos: any majority will do.",
        ends: Ending::Decided,
        plot: Plot::WriteOnce {
            scenario: "last-voter-crash",
            algo: Algo::Paxos,
        },
        notes: &[],
    },
    Story {
        name: "user-of-the-day",
        about: "Three offers, a three-way split and two crashes: Paxos still decides.",
        ends: Ending::Decided,
        plot: Plot::WriteOnce {
            scenario: "user-of-the-day",
            algo: Algo::Paxos,
        },
        notes: &[],
    },
    Story {
        name: "leader",
        about: "Raft: an election, then a leader and four followers agreeing on every write.",
        ends: Ending::Decided,
        plot: Plot::Raft {
            nodes: 5,
            schedule: Schedule::default,
            for_ms: 600,
        },
        notes: &[],
    },
    Story {
        name: "split",
        about: "Raft: the network splits {n0 n1} | {n2 n3 n4}; only the three can commit.",
        ends: Ending::Decided,
        plot: Plot::Raft {
            nodes: 5,
            schedule: || Schedule {
                events: vec![(
                    300 * MS,
                    NodeFault::Partition {
                        groups: vec![vec![0, 1], vec![2, 3, 4]],
                        heal_after: 600 * MS,
                    },
                )],
                ..Schedule::default()
            },
            for_ms: 1_100,
        },
        notes: &[],
    },
    Story {
        name: "raft-election",
        about: "Raft: two of five crash and come back; the others elect and go on.",
        ends: Ending::Decided,
        plot: Plot::Raft {
            nodes: 5,
            schedule: || Schedule {
                events: vec![(300 * MS, crash(0, 500)), (300 * MS, crash(1, 700))],
                ..Schedule::default()
            },
            for_ms: 1_200,
        },
        notes: &[],
    },
    Story {
        name: "raft-figure-8",
        about: "Raft's Figure 8: why a leader may not commit an entry of an older term by counting replicas.",
        ends: FIGURE_8_ENDS,
        plot: Plot::Scripted(figure_8),
        notes: FIGURE_8_NOTES,
    },
    Story {
        name: "multipaxos-takeover",
        about: "Multi-Paxos: the leader crashes; one phase 1 gives the next leader every open slot.",
        ends: Ending::Decided,
        plot: Plot::Scripted(multipaxos_takeover),
        notes: &[
            "The new leader sends one Prepare for every slot from the first it has not learned. The promises carry what",
            "each acceptor accepted there; it proposes each slot's highest-ballot value again (a no-op where there is none),",
            "then new commands in the next free slots, with phase 2 alone. Labels: who leads (ballot round.node), slots learned.",
        ],
    },
    Story {
        name: "2pc-blocks",
        about: "2PC: the coordinator dies after the votes; yes-voters wait in doubt for ever.",
        ends: Ending::Stuck,
        plot: Plot::Commit {
            algo: Algo::TwoPc,
            schedule: coordinator_dies,
        },
        notes: &[],
    },
    Story {
        name: "3pc-survives",
        about: "3PC: the same coordinator crash; the participants finish without it.",
        ends: Ending::Decided,
        plot: Plot::Commit {
            algo: Algo::ThreePc,
            schedule: coordinator_dies,
        },
        notes: &[],
    },
    Story {
        name: "3pc-partition",
        about: "3PC: a partition cuts off two participants before the pre-commit: one side commits, the other aborts.",
        ends: Ending::Violated,
        plot: Plot::Scripted(three_pc_partition),
        notes: &[
            "n2 and n3 cannot tell a dead coordinator from an unreachable one: both uncertain, they abort.",
            "n1 was pre-committed, so its side commits. Timeouts made 3PC non-blocking, and partitions make it unsafe.",
        ],
    },
];

/// How much of a run's uneventful end its picture keeps.
const QUIET_TAIL: Instant = 300 * MS;

/// The commit stories' first transaction begins at this many ms.
const BEGIN: u64 = 50;
/// When their coordinator dies: just after it asked for the votes (every
/// request is on the wire), before any vote is back.
const COORDINATOR_DIES: u64 = BEGIN;

/// The coordinator crashes for good just after asking for the votes.
fn coordinator_dies() -> Schedule {
    Schedule {
        events: vec![(COORDINATOR_DIES * MS + MS / 4, crash_for_good(0))],
        ..Schedule::default()
    }
}

/// The commit stories' cluster: n0 coordinates, n1..n3 take part.
fn commit_config() -> SimConfig {
    let mut cfg = SimConfig::new(4, FaultSet::NONE);
    cfg.f = 1;
    cfg.timeline = true;
    cfg
}

/// 2PC or 3PC nodes (`node`) on the commit stories' cluster, every vote
/// yes, the first transaction at [`BEGIN`].
fn commit_model<N>(
    node: fn(NodeId, Layout, VotePlan, &Log) -> N,
) -> CommitModel<N, impl FnMut(NodeId, &Log, u64) -> N>
where
    N: Node<Input = CommitInput, Event = CommitEvent, Disk = Log> + CommitNode,
{
    let (layout, plan) = (Layout::new(4, 3), VotePlan::all_yes());
    CommitModel::new(layout, move |id, disk: &_, _| node(id, layout, plan, disk))
        .starting_at(BEGIN * MS)
}

fn crash(node: NodeId, back_after_ms: u64) -> NodeFault {
    NodeFault::Crash {
        node,
        power_loss: false,
        torn: false,
        restart_after: Some(back_after_ms * MS),
    }
}

pub fn find(name: &str) -> Option<&'static Story> {
    STORIES.iter().find(|s| s.name == name)
}

/// Runs `story` from `seed`, with its timeline recorded and the story's
/// notes attached to it.
pub fn run(story: &Story, seed: u64) -> RunReport {
    let mut report = run_plot(&story.plot, seed);
    let ending = Ending::of(&report);
    if let Some(t) = report.timeline.as_mut() {
        t.notes = story.notes.iter().map(|n| n.to_string()).collect();
        if let Some(end) = t.cut_quiet_tail(QUIET_TAIL) {
            t.notes.push(format!(
                "Nothing but messages after this; the run went on to {} ms ({}).",
                end / MS,
                ending.word()
            ));
        }
    }
    report
}

fn run_plot(plot: &Plot, seed: u64) -> RunReport {
    match plot {
        Plot::Scripted(script) => script(seed),
        Plot::WriteOnce { scenario, algo } => {
            let s = scenarios::find(scenario).expect("a story names a scenario that exists");
            scenarios::run_drawn(s, *algo, seed).report
        }
        Plot::Raft {
            nodes,
            schedule,
            for_ms,
        } => {
            let n = *nodes;
            let model = RaftModel::new(n, 1, move |id, disk: &Disk, seed| {
                let peers: Vec<NodeId> = (0..n as NodeId).collect();
                KvNode::new(RaftConfig::new(id, peers), disk, seed)
            })
            // The model's own leader transfers and snapshots are not part
            // of any story.
            .with_admin(false);
            let mut cfg = SimConfig::new(n, FaultSet::NONE);
            cfg.f = (n - 1) / 2;
            cfg.timeline = true;
            cfg.fault_phase = for_ms * MS;
            Simulation::with_schedule(cfg, seed, model, schedule()).run(seed)
        }
        Plot::Commit { algo, schedule } => {
            let cfg = commit_config();
            match algo {
                Algo::TwoPc => {
                    let model = commit_model(TwoPcNode::new);
                    Simulation::with_schedule(cfg, seed, model, schedule()).run(seed)
                }
                _ => {
                    let model = commit_model(ThreePcNode::new);
                    Simulation::with_schedule(cfg, seed, model, schedule()).run(seed)
                }
            }
        }
    }
}

/// The session of a write a story makes itself (the model's clients, if
/// any, count from 1).
const STORY_CLIENT: u64 = 1_000;

/// How long a scripted story waits for the state it strikes on.
const PATIENCE: Instant = 3_000 * MS;

/// Steps `sim` until `cond` holds; a story whose cue never comes is a bug
/// in the story, named in the panic.
fn step_until<M: crate::sim::Model>(
    sim: &mut Simulation<M>,
    what: &str,
    mut cond: impl FnMut(&crate::Ctl<'_, M::Node>) -> bool,
) {
    let limit = sim.now() + PATIENCE;
    let ok = sim.run_until(limit, |_, ctl| cond(ctl) || ctl.in_quiet_phase());
    let ok = ok && !sim.in_quiet_phase();
    assert!(ok, "story: {what} did not happen by {} ms", limit / MS);
}

/// 3PC's failure mode: all four nodes vote yes, then the network splits
/// {n0 n1} | {n2 n3} the moment the coordinator sends its pre-commits, so
/// that only n1's arrives (a message is lost if a split separates its ends
/// when it would arrive).
fn three_pc_partition(seed: u64) -> RunReport {
    let model = commit_model(ThreePcNode::new);
    let mut sim = Simulation::with_schedule(commit_config(), seed, model, Schedule::default());
    sim.start(seed);
    // The coordinator sends its pre-commits once its decision to send them
    // is durable.
    step_until(&mut sim, "the coordinator pre-committing", |ctl| {
        ctl.disk(0).describe().contains("pre-committed")
    });
    sim.fault_now(NodeFault::Partition {
        groups: vec![vec![0, 1], vec![2, 3]],
        heal_after: 1_000 * MS,
    });
    sim.run_rest(seed).0
}

/// Whether this build draws Figure 8 with the counting rule broken (the
/// `broken` feature); without it, the same script shows the rule holding.
pub const FIGURE_8_BROKEN: bool = cfg!(feature = "broken");

const FIGURE_8_ENDS: Ending = if FIGURE_8_BROKEN {
    Ending::Violated
} else {
    Ending::Decided
};

#[cfg(feature = "broken")]
const FIGURE_8_NOTES: &[&str] = &[
    "Drawn with the rule broken: a leader commits any entry stored on a majority, even one of an earlier term.",
    "(a) n0 leads; its entry at the disputed index reaches n1 only. (b) n4 wins the next term with n2 and n3, writes its",
    "own entry at that index and crashes before sending it. (c) n0 returns and wins; its old entry reaches n2, a majority:",
    "counting, n0 commits and applies it; n2 is cut off and n0 crashes. (d) n4's last entry has the newer term, so n2 and",
    "n3 elect it, and it overwrites the committed entry everywhere. Raft's rule: count only entries of the leader's own term.",
];

#[cfg(not(feature = "broken"))]
const FIGURE_8_NOTES: &[&str] = &[
    "Drawn with Raft's rule: a leader commits by counting only entries of its own term. (This build cannot break it;",
    "`cargo run --release --features broken -- story raft-figure-8` draws the counting rule losing a committed entry.)",
    "(a) n0 leads; its entry at the disputed index reaches n1 only. (b) n4 wins the next term with n2 and n3, writes its",
    "own entry at that index and crashes before sending it. (c) n0 returns and wins; its old entry reaches n2, a majority,",
    "but n0 waits until an entry of its own term is there too; then n2 is cut off and n0 crashes. (d) n2 holds the newer",
    "term, so n4 cannot win; n0 comes back and leads again.",
];

/// Raft's Figure 8 on five nodes, cue by cue (see [`FIGURE_8_NOTES`]). Who
/// campaigns is the story's to decide: n0 times out first, then n4; the
/// others would wait ten seconds. One entry per message and one message in
/// flight make a new leader's older entries reach a majority before its own.
fn figure_8(seed: u64) -> RunReport {
    const N: usize = 5;
    // No clients: the story writes its one entry itself, so that nothing
    // else moves the logs.
    let model = RaftModel::new(N, 0, |id, disk: &Disk, seed| {
        let mut cfg = RaftConfig::new(id, (0..N as NodeId).collect());
        cfg.pre_vote = false;
        cfg.check_quorum = false;
        cfg.max_batch = 1;
        cfg.max_inflight = 1;
        cfg.election_ticks = match id {
            0 => 10,
            4 => 20,
            _ => 1_000,
        };
        let node = KvNode::new(cfg, disk, seed);
        #[cfg(feature = "broken")]
        let node = node.with_bugs(synod_protocols::raft::Bugs {
            commit_old_term_by_counting: true,
            ..Default::default()
        });
        node
    })
    .with_admin(false)
    .with_catch_up(false);
    let mut cfg = SimConfig::new(N, FaultSet::NONE);
    cfg.f = 2;
    cfg.timeline = true;
    cfg.fault_phase = 3_000 * MS;
    let mut sim = Simulation::with_schedule(cfg, seed, model, Schedule::default());
    sim.start(seed);
    type Ctl<'a> = crate::Ctl<'a, WalBacked>;
    fn raft<'a>(ctl: &'a Ctl<'_>, id: NodeId) -> Option<&'a RaftNode> {
        ctl.node(id).and_then(WalBacked::raft)
    }
    let leads = |ctl: &Ctl<'_>, id| raft(ctl, id).is_some_and(|r| r.role() == Role::Leader);
    let last = |ctl: &Ctl<'_>, id| raft(ctl, id).map_or(0, RaftNode::last_index);
    // Down until the story brings it back.
    let down = |node| NodeFault::Crash {
        node,
        power_loss: false,
        torn: false,
        restart_after: Some(3_600_000 * MS),
    };
    let split = |groups: &[&[NodeId]]| NodeFault::Partition {
        groups: groups.iter().map(|g| g.to_vec()).collect(),
        heal_after: 3_600_000 * MS,
    };

    // (a) n0 leads; cut off with n1, it stores a client's write on n1 only.
    // It is cut off at a quiet moment, when every node holds every entry,
    // so that n4 can win next with what it has.
    let mut disputed = 0;
    step_until(&mut sim, "n0 leading, all in step", |ctl| {
        disputed = last(ctl, 0) + 1;
        leads(ctl, 0)
            && raft(ctl, 0).is_some_and(|r| r.committed_own_term())
            && (1..N as NodeId).all(|id| last(ctl, id) == last(ctl, 0))
    });
    sim.fault_now(split(&[&[0, 1], &[2, 3, 4]]));
    let put = KvOp::Put {
        key: "x".into(),
        value: "n0's".into(),
    };
    let req = KvRequest {
        client: STORY_CLIENT,
        seq: 1,
        op: put,
    };
    sim.input(0, KvInput::Client(req));
    step_until(&mut sim, "an entry reaching n1 only", |ctl| {
        last(ctl, 1) >= disputed
    });
    sim.fault_now(down(0));
    // (b) n4 wins with n2 and n3, and crashes before its entry leaves, but
    // after it is written (it may wait in memory behind the sync of n4's
    // vote; the messages that leave as its own sync starts are lost below).
    step_until(&mut sim, "n4 leading", |ctl| leads(ctl, 4));
    let written = sim.now() + 100 * MS;
    sim.run_until(written, |_, ctl| !ctl.holds_unwritten(4));
    sim.fault_now(down(4));
    sim.lose_in_flight(4);
    // (c) n0 returns and wins with n1 and n2 (n3 is cut off), and
    // replicates until it has applied the disputed entry. n2 hears from it
    // again only once n1 has acknowledged n0's own entry, so that n2's
    // answer for the disputed one is the last that counts: n0 answers it
    // with its own entry, which must not reach n2 (below).
    sim.fault_now(split(&[&[0, 1, 2], &[3], &[4]]));
    sim.restart_now(0);
    step_until(&mut sim, "n0 leading", |ctl| leads(ctl, 0));
    sim.fault_now(split(&[&[0, 1], &[2], &[3], &[4]]));
    step_until(&mut sim, "n1 holding n0's entry, as n0 knows", |ctl| {
        raft(ctl, 0).is_some_and(|r| r.match_index(1) >= Some(r.last_index()))
    });
    sim.fault_now(split(&[&[0, 1, 2], &[3], &[4]]));
    step_until(&mut sim, "n0 applying the disputed entry", |ctl| {
        raft(ctl, 0).is_some_and(|r| r.applied_index() >= disputed)
    });
    // n2 must not hear what n0 sends next (an entry of n0's own term), and
    // n0 must live until it reports the entry applied: cut n2 off (with
    // what n0 sent in the step that applied: its next entry leaves at once
    // when no sync of n0's is in flight), wait out n0's disk, then crash n0.
    sim.fault_now(split(&[&[0, 1], &[2], &[3], &[4]]));
    sim.lose_in_flight(0);
    let synced = sim.now() + 20 * MS;
    sim.run_until(synced, |_, _| false);
    sim.fault_now(down(0));
    // (d) n4 returns into a whole network and campaigns. Once it leads (or
    // has had time to), the story is told: n0 comes back with the rest.
    sim.heal_now();
    sim.restart_now(4);
    let patience = sim.now() + 1_200 * MS;
    if sim.run_until(patience, |_, ctl| leads(ctl, 4)) {
        let overwritten = sim.now() + 100 * MS;
        sim.run_until(overwritten, |_, _| false);
    }
    sim.quiet_now();
    sim.run_rest(seed).0
}

/// Multi-Paxos on five nodes with one client: once a leader has learned a
/// few slots, it crashes (back 500 ms later), and another takes over.
fn multipaxos_takeover(seed: u64) -> RunReport {
    const N: usize = 5;
    let model = MultiPaxosModel::new(N, 1, |id, disk: &_, seed| {
        MpKvNode::new(MpConfig::new(id, N), disk, seed)
    });
    let mut cfg = SimConfig::new(N, FaultSet::NONE);
    cfg.f = 2;
    cfg.timeline = true;
    cfg.fault_phase = 1_000 * MS;
    let mut sim = Simulation::with_schedule(cfg, seed, model, Schedule::default());
    sim.start(seed);
    let mut leader = 0;
    step_until(&mut sim, "a leader with five slots learned", |ctl| {
        let found = (0..N as NodeId).find(|&id| {
            ctl.node(id)
                .is_some_and(|n| n.core().is_leader() && n.core().learned_upto() >= 5)
        });
        leader = found.unwrap_or(0);
        found.is_some()
    });
    sim.fault_now(crash(leader, 500));
    sim.run_rest(seed).0
}
