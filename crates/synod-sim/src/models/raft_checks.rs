//! The Raft properties and the storage checks, for any node built on the Raft
//! core and kept on the WAL ([`WalBacked`]): the toy [`KvNode`] of `--algo
//! raft` and the service's `Replica` of `--algo etcd` get the same checkers.
//!
//! A model feeds [`RaftChecks`] what its nodes report (a leader elected, an
//! entry applied), forwards its crash, restart and storage-fault hooks, and
//! calls [`RaftChecks::finish`] at the end of the run:
//!
//! * **election_safety** — at most one node becomes leader in any term;
//! * **log_matching** — two up nodes whose logs hold an entry of the same term
//!   at the same index agree on every earlier entry both still hold (checked
//!   whenever the model calls [`RaftChecks::check_logs`], and at the end);
//! * **leader_completeness** — a node that becomes leader of term `T` holds
//!   every entry known to be committed before any leader of term `T` or later
//!   existed;
//! * **state_machine_safety** — no two nodes apply different entries at one
//!   index, and a node applies indexes in increasing order;
//! * **commit_rule** — a leader advances its commit index only to an entry of
//!   its own term (Raft §5.4.2), checked whenever a leader applies;
//! * **durable_commit** — a leader tells followers (appends, heartbeats) only
//!   of a commit index its own durable log reaches: a message never overtakes
//!   the sync of a write the node made earlier (`Envelope::early`), so no
//!   follower applies an entry a power cut at the leader could take back;
//! * **storage** — the WAL accepted every write the node made durable; every
//!   recovery returned exactly what was made durable (after a torn write: plus
//!   a prefix of that write); every failed recovery failed on damaged data.
//!
//! [`KvNode`]: synod_protocols::raft::KvNode

use std::collections::{BTreeMap, HashMap};

use rand::Rng;
use rand_chacha::ChaCha8Rng;
use synod_protocols::raft::{ConfChange, Disk, EntryData, Message, RaftNode, Role, Write};
use synod_protocols::{Instant, Node, NodeId};
use synod_storage::{Error as StorageError, RecoveryReport};

use crate::models::wal_disk::{Durable, OnRaft, SimDisk, WalBacked, WalDisk};
use crate::report::RunReport;
use crate::sim::Ctl;

/// The properties [`RaftChecks`] reports under.
pub const PROPERTIES: &[&str] = &[
    "election_safety",
    "log_matching",
    "leader_completeness",
    "state_machine_safety",
    "commit_rule",
    "durable_commit",
    "storage",
];

/// The counters [`RaftChecks::finish`] reports.
pub const COUNTERS: &[&str] = &[
    "elections",
    "entries_committed",
    "messages",
    "failovers",
    "failover_us_total",
    "config_changes",
    "torn_writes",
    "torn_tails",
    "corruptions",
    "corruption_detected",
    "snapshots_taken",
    "snapshots_installed",
    "runs_with_torn_tails",
    "runs_with_corruption_detected",
    "runs_with_snapshots_installed",
];

/// What the storage layer saw in one run (shared with the Multi-Paxos
/// replicas' checks, whose journal is on the same WAL).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct StorageCounters {
    /// Power losses that cut a write in the middle.
    torn_writes: u64,
    /// Recoveries that found a torn tail and cut it off.
    torn_tails: u64,
    /// Bits flipped in stored files.
    corruptions: u64,
    /// Recoveries that refused a damaged disk (the node stopped).
    corruption_detected: u64,
    /// Recoveries that failed for another reason (a bug if ever non-zero).
    recovery_errors: u64,
}

impl StorageCounters {
    /// Counts what a recovery found: a torn tail cut, a damaged disk
    /// refused, or a failure that is no disk's fault.
    pub(crate) fn recovered(&mut self, recovery: &Result<RecoveryReport, StorageError>) {
        match recovery {
            Ok(report) => self.torn_tails += u64::from(report.torn_tail.is_some()),
            Err(e) if e.is_data_error() => self.corruption_detected += 1,
            Err(_) => self.recovery_errors += 1,
        }
    }

    /// Boots node `id` from `disk` and counts what its recovery found. With
    /// `wipe` (the deliberately broken variant the checkers must catch), a
    /// node whose disk is refused starts over on an emptied one instead of
    /// staying stopped.
    pub(crate) fn boot<N: Durable>(
        &mut self,
        id: NodeId,
        disk: &N::OnDisk,
        wipe: bool,
        mut build: impl FnMut(&N::Disk) -> N,
    ) -> WalBacked<N> {
        let (node, recovery) = WalBacked::boot(id, disk, &mut build);
        self.recovered(&recovery);
        match recovery {
            Err(_) if wipe => {
                disk.wipe();
                WalBacked::boot(id, disk, build).0
            }
            _ => node,
        }
    }

    /// A bit flipped (`hit`) or a batch torn.
    pub(crate) fn corrupted(&mut self, hit: bool) {
        self.corruptions += u64::from(hit);
    }

    pub(crate) fn torn(&mut self) {
        self.torn_writes += 1;
    }

    /// The end of a run: failed recoveries that were no disk's fault are
    /// violations; the counters.
    pub(crate) fn finish<N: Node>(&self, ctl: &mut Ctl<'_, N>, report: &mut RunReport) {
        if self.recovery_errors > 0 {
            ctl.violation(
                "storage",
                None,
                format!(
                    "{} recoveries failed without a data error",
                    self.recovery_errors
                ),
            );
        }
        report.count("runs_with_torn_tails", u64::from(self.torn_tails > 0));
        report.count(
            "runs_with_corruption_detected",
            u64::from(self.corruption_detected > 0),
        );
        report.count("torn_writes", self.torn_writes);
        report.count("torn_tails", self.torn_tails);
        report.count("corruptions", self.corruptions);
        report.count("corruption_detected", self.corruption_detected);
    }
}

/// The checkers' memory of a run.
pub struct RaftChecks {
    n: usize,
    /// Leader of each term seen in a `BecameLeader` event.
    leaders: HashMap<u64, NodeId>,
    max_leader_term: u64,
    /// Per node: the term it was last seen becoming leader of, and its commit
    /// index then.
    elected: Vec<Option<(u64, u64)>>,
    /// The first entry seen applied at each index: (term, digest, the highest
    /// leader term known when it was first seen applied).
    committed: BTreeMap<u64, (u64, u64, u64)>,
    /// Per node, the last index it applied in its current incarnation.
    last_applied: Vec<Option<u64>>,
    /// When the current leader crashed, if a new one is awaited: (time, term).
    leader_crash: Option<(Instant, u64)>,
    failovers: Vec<Instant>,
    elections: u64,
    /// Membership changes committed.
    config_changes: u64,
    storage: StorageCounters,
    /// The deliberately broken recovery (tests only): see
    /// [`RaftChecks::wipe_on_corruption`].
    wipe_on_corruption: bool,
}

impl RaftChecks {
    /// Checks for a simulation of `n` nodes.
    pub fn new(n: usize) -> RaftChecks {
        RaftChecks {
            n,
            leaders: HashMap::new(),
            max_leader_term: 0,
            elected: vec![None; n],
            committed: BTreeMap::new(),
            last_applied: vec![None; n],
            leader_crash: None,
            failovers: Vec::new(),
            elections: 0,
            config_changes: 0,
            storage: StorageCounters::default(),
            wipe_on_corruption: false,
        }
    }

    /// Deliberately broken (for tests): a node whose recovery finds its disk
    /// damaged deletes the data directory and starts over from an empty log
    /// with no vote, instead of staying down. It forgets promises it made
    /// (votes, acknowledged entries), which the checkers must catch.
    pub fn wipe_on_corruption(&mut self) {
        self.wipe_on_corruption = true;
    }

    /// Checks `n` nodes instead (before the run starts).
    pub fn resize(&mut self, n: usize) {
        self.n = n;
        self.elected = vec![None; n];
        self.last_applied = vec![None; n];
    }

    /// The failover times seen so far (a leader crash to a higher-term leader).
    pub fn take_failovers(&mut self) -> Vec<Instant> {
        std::mem::take(&mut self.failovers)
    }

    /// Boots node `id` from its WAL with `build`, counting what recovery
    /// found. A node whose disk fails recovery stays stopped.
    pub fn boot<N: OnRaft>(
        &mut self,
        id: NodeId,
        disk: &WalDisk,
        build: impl FnMut(&Disk) -> N,
    ) -> WalBacked<N> {
        self.storage.boot(id, disk, self.wipe_on_corruption, build)
    }

    /// Flips a bit of one of the node's stored files (the model's `corrupt`).
    pub fn corrupt(&mut self, disk: &mut WalDisk, rng: &mut ChaCha8Rng) -> bool {
        let hit = disk.corrupt(rng).is_some();
        self.storage.corrupted(hit);
        hit
    }

    /// Cuts a batch of writes with a power loss (the model's `tear`).
    pub fn tear(&mut self, disk: &mut WalDisk, writes: &[Write], rng: &mut ChaCha8Rng) {
        self.storage.torn();
        let (seed, budget) = (rng.gen(), rng.gen_range(0..12));
        disk.tear(writes, seed, budget);
    }

    /// Armed power losses wait for a batch with entries or a snapshot: a
    /// hard state alone fits in one sector and cannot be torn.
    pub fn worth_tearing(writes: &[Write]) -> bool {
        writes
            .iter()
            .any(|w| !matches!(w, Write::HardState(_) | Write::Commit(_)))
    }

    /// Node `node` applied entry `index` of term `term` with data `digest`.
    pub fn on_applied<N: OnRaft>(
        &mut self,
        ctl: &mut Ctl<'_, WalBacked<N>>,
        node: NodeId,
        index: u64,
        term: u64,
        digest: u64,
    ) {
        if let Some(last) = self.last_applied[node as usize] {
            if index <= last {
                ctl.violation(
                    "state_machine_safety",
                    Some(node),
                    format!("applied index {index} after index {last}"),
                );
            }
        }
        self.last_applied[node as usize] = Some(index);
        self.check_commit_rule(ctl, node);
        match self.committed.get(&index) {
            Some(&(t, d, _)) if (t, d) != (term, digest) => ctl.violation(
                "state_machine_safety",
                Some(node),
                format!("applied entry (term {term}, digest {digest:#x}) at index {index}, where (term {t}, digest {d:#x}) was applied before"),
            ),
            Some(_) => {}
            None => {
                self.committed.insert(index, (term, digest, self.max_leader_term));
                let raft = ctl.node(node).and_then(WalBacked::raft);
                if raft
                    .and_then(|r| r.entry(index))
                    .is_some_and(|e| matches!(e.data, EntryData::Config(_)))
                {
                    self.config_changes += 1;
                }
            }
        }
    }

    /// Node `from` sends `msg`: a commit index it carries must be durable
    /// in the sender's own log (the **durable_commit** property).
    pub fn on_send<N: OnRaft>(
        &mut self,
        ctl: &mut Ctl<'_, WalBacked<N>>,
        from: NodeId,
        msg: &Message,
    ) {
        let commit = match msg {
            Message::Append { commit, .. } | Message::Heartbeat { commit, .. } => *commit,
            _ => return,
        };
        if commit == 0 {
            return;
        }
        let Some(term) = ctl
            .node(from)
            .and_then(WalBacked::raft)
            .and_then(|r| r.entry_term(commit))
        else {
            return; // compacted away: a snapshot covers it
        };
        if !ctl.disk(from).durably_holds(commit, term) {
            ctl.violation(
                "durable_commit",
                Some(from),
                format!("sent commit index {commit} (an entry of term {term}) before its own log held it durably"),
            );
        }
    }

    fn check_commit_rule<N: OnRaft>(&mut self, ctl: &mut Ctl<'_, WalBacked<N>>, node: NodeId) {
        let Some((term, base)) = self.elected[node as usize] else {
            return;
        };
        let Some(r) = ctl.node(node).and_then(WalBacked::raft) else {
            return;
        };
        if r.role() != Role::Leader || r.term() != term {
            return;
        }
        let commit = r.commit_index();
        if commit <= base {
            return;
        }
        if let Some(t) = r.entry_term(commit) {
            if t != term {
                ctl.violation(
                    "commit_rule",
                    Some(node),
                    format!("leader of term {term} advanced its commit index to {commit}, an entry of term {t}"),
                );
                // Once per election is enough.
                self.elected[node as usize] = None;
            }
        }
    }

    /// Node `node` became leader of `term`.
    pub fn on_became_leader<N: OnRaft>(
        &mut self,
        ctl: &mut Ctl<'_, WalBacked<N>>,
        node: NodeId,
        term: u64,
    ) {
        self.elections += 1;
        match self.leaders.get(&term) {
            Some(&other) if other != node => ctl.violation(
                "election_safety",
                Some(node),
                format!("became leader of term {term}, which n{other} leads"),
            ),
            Some(_) => {}
            None => {
                self.leaders.insert(term, node);
            }
        }
        if let Some((at, old)) = self.leader_crash {
            if term > old {
                self.failovers.push(ctl.now() - at);
                self.leader_crash = None;
            }
        }
        self.max_leader_term = self.max_leader_term.max(term);
        if let Some(r) = ctl.node(node).and_then(WalBacked::raft) {
            if r.term() == term {
                self.elected[node as usize] = Some((term, r.commit_index()));
            }
        }
        // Leader completeness: every entry committed before a leader of this
        // term (or a later one) existed must be in this leader's log or
        // snapshot.
        let Some(raft) = ctl.node(node).and_then(WalBacked::raft) else {
            return;
        };
        let (first, last) = (raft.first_index(), raft.last_index());
        let mut missing = None;
        for (&index, &(t, _, known_leader)) in self.committed.range(first..) {
            if known_leader >= term {
                continue;
            }
            let have = if index <= last {
                raft.entry_term(index)
            } else {
                None
            };
            if have != Some(t) {
                missing = Some((index, t, have));
                break;
            }
        }
        if let Some((index, t, have)) = missing {
            let have = have.map_or("nothing".to_string(), |h| format!("term {h}"));
            ctl.violation(
                "leader_completeness",
                Some(node),
                format!("leader of term {term} holds {have} at index {index}, where an entry of term {t} was committed"),
            );
        }
    }

    /// Compares the logs of every pair of up nodes.
    pub fn check_logs<N: OnRaft>(&mut self, ctl: &mut Ctl<'_, WalBacked<N>>) {
        let mut found = None;
        'pairs: for a in 0..self.n as NodeId {
            let Some(ra) = ctl.node(a).and_then(WalBacked::raft) else {
                continue;
            };
            for b in a + 1..self.n as NodeId {
                let Some(rb) = ctl.node(b).and_then(WalBacked::raft) else {
                    continue;
                };
                let lo = ra.first_index().max(rb.first_index());
                let hi = ra.last_index().min(rb.last_index());
                let mut anchor: Option<u64> = None;
                let mut i = hi;
                while i >= lo && i > 0 {
                    let (ta, tb) = (ra.entry_term(i), rb.entry_term(i));
                    if let (Some(ta), Some(tb)) = (ta, tb) {
                        if ta == tb {
                            anchor.get_or_insert(i);
                        } else if let Some(at) = anchor {
                            found = Some(format!(
                                "n{a} and n{b} agree on index {at} (term {}) but differ at index {i} (terms {ta} and {tb})",
                                ra.entry_term(at).unwrap_or(0)
                            ));
                            break 'pairs;
                        }
                    }
                    i -= 1;
                }
            }
        }
        if let Some(detail) = found {
            ctl.violation("log_matching", None, detail);
        }
    }

    /// Whether there is a leader and every member of its configuration that
    /// is up has applied everything it committed. Part of a run's end, so a
    /// member left behind for good (say, one that needs entries nobody will
    /// send it) makes the run stuck rather than passing unnoticed.
    pub fn members_caught_up<N: OnRaft>(&self, ctl: &Ctl<'_, WalBacked<N>>) -> bool {
        let Some((leader, _)) = self.current_leader(ctl) else {
            return false;
        };
        let Some(l) = ctl.node(leader).and_then(WalBacked::raft) else {
            return false;
        };
        let commit = l.commit_index();
        l.conf().members().all(|m| {
            ctl.is_down_for_good(m)
                || ctl
                    .node(m)
                    .and_then(WalBacked::raft)
                    .is_none_or(|r| r.applied_index() >= commit)
        })
    }

    /// The leader of the highest term among up voters, if that node leads.
    pub fn current_leader<N: OnRaft>(&self, ctl: &Ctl<'_, WalBacked<N>>) -> Option<(NodeId, u64)> {
        let mut max_term = 0;
        let mut leader = None;
        for i in 0..self.n as NodeId {
            // Nodes outside the configuration (spares, removed nodes) never
            // campaign, whatever term they remember.
            if let Some(r) = ctl
                .node(i)
                .and_then(WalBacked::raft)
                .filter(|r| r.promotable())
            {
                max_term = max_term.max(r.term());
                if r.role() == Role::Leader {
                    leader = Some((i, r.term()));
                }
            }
        }
        leader.filter(|&(_, t)| t == max_term)
    }

    /// Node `node` crashed: a leader's crash starts a failover clock.
    pub fn on_crash<N: OnRaft>(&mut self, ctl: &Ctl<'_, WalBacked<N>>, node: NodeId) {
        self.last_applied[node as usize] = None;
        self.elected[node as usize] = None;
        if self.leader_crash.is_none() {
            let led = self
                .leaders
                .iter()
                .filter(|&(_, &l)| l == node)
                .map(|(&t, _)| t)
                .max();
            if let Some(t) = led {
                if t == self.max_leader_term {
                    self.leader_crash = Some((ctl.now(), t));
                }
            }
        }
    }

    /// Node `node` restarted; one whose disk failed recovery stays down.
    pub fn on_restart<N: OnRaft>(&mut self, ctl: &mut Ctl<'_, WalBacked<N>>, node: NodeId) {
        self.last_applied[node as usize] = None;
        WalBacked::keep_stopped_down(ctl, node);
    }

    /// The end of the run: the last log comparison, the storage verdicts and
    /// the counters.
    pub fn finish<N: OnRaft>(&mut self, ctl: &mut Ctl<'_, WalBacked<N>>, report: &mut RunReport) {
        self.check_logs(ctl);
        for node in 0..self.n as NodeId {
            if let Some(e) = ctl.disk(node).storage_error() {
                ctl.violation("storage", Some(node), e);
            }
        }
        self.storage.finish(ctl, report);
        let (mut taken, mut installed) = (0, 0);
        for node in 0..self.n as NodeId {
            let (t, i) = ctl.disk(node).snapshots();
            taken += t;
            installed += i;
        }
        report.count("snapshots_taken", taken);
        report.count("snapshots_installed", installed);
        report.count("runs_with_snapshots_installed", u64::from(installed > 0));
        report.count("elections", self.elections);
        report.count("config_changes", self.config_changes);
        report.count(
            "entries_committed",
            self.committed.keys().next_back().copied().unwrap_or(0),
        );
        report.count("messages", ctl.messages_sent());
        report.count("failovers", self.failovers.len() as u64);
        report.count("failover_us_total", self.failovers.iter().sum());
    }
}

/// The next membership change a run asks `leader` for, one server at a
/// time: remove a voter while there are more than `initial_voters`, else
/// promote a learner, else add one of the `n` nodes that is outside the
/// configuration (as a voter or, more often, a learner).
pub fn next_membership_change(
    leader: &RaftNode,
    n: usize,
    initial_voters: usize,
    rng: &mut impl Rng,
) -> Option<ConfChange> {
    let (voters, learners) = (leader.voters(), leader.learners());
    let outside: Vec<NodeId> = (0..n as NodeId)
        .filter(|i| !voters.contains(i) && !learners.contains(i))
        .collect();
    // The configuration in force is the latest committed one. Only a leader
    // that has committed an entry of its term, with no change pending, knows
    // it for sure; asking anything else to remove a voter could take the
    // cluster below the initial voter count, and so below the f nodes the
    // run may keep down for good.
    let settled = leader.committed_own_term() && !leader.conf_change_pending();
    Some(if voters.len() > initial_voters && settled {
        ConfChange::RemoveNode(voters[rng.gen_range(0..voters.len())])
    } else if let Some(&l) = learners.first() {
        ConfChange::PromoteLearner(l)
    } else if !outside.is_empty() {
        let x = outside[rng.gen_range(0..outside.len())];
        if rng.gen_bool(0.3) {
            ConfChange::AddVoter(x)
        } else {
            ConfChange::AddLearner(x)
        }
    } else {
        return None;
    })
}
