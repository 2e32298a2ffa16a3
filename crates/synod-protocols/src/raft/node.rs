//! The Raft state machine: roles, elections, replication, commitment, reads,
//! snapshots and membership. See the parent module for the ordering contract.

use super::log::RaftLog;
use super::progress::{Progress, ProgressState};
use super::{
    Bugs, ConfChange, ConfState, Disk, Entry, EntryData, HardState, Message, Payload, RaftConfig,
    RejectHint, Snapshot, SnapshotMeta, Write,
};
use crate::sansio::{NodeId, Output};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, VecDeque};

/// What the Raft core tells the application besides the notifications it
/// polls for (`next_committed`, `take_*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum RaftEvent {
    /// This node won an election for `term`.
    BecameLeader { term: u64 },
}

/// One call's output: records to persist, messages to send, events.
pub type RaftOutput = Output<Write, Message, RaftEvent>;

pub(crate) type Out = RaftOutput;

/// What a node currently believes it is. Learners are followers that never
/// campaign (see [`RaftNode::learners`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Role {
    Follower,
    /// Asking for pre-votes: the term is not raised until a quorum would vote.
    PreCandidate,
    Candidate,
    Leader,
}

/// A read waiting for a heartbeat round to confirm leadership.
#[derive(Clone, Copy, Debug)]
struct PendingRead {
    id: u64,
    /// The follower that asked (`None`: a read of this node's own).
    from: Option<NodeId>,
    index: u64,
    /// The first heartbeat round sent after the read arrived.
    ctx: u64,
}

/// A leadership transfer in progress.
#[derive(Clone, Copy, Debug)]
struct Transfer {
    target: NodeId,
    started: u64,
}

/// The Raft consensus core of one node.
#[derive(Clone, Debug)]
pub struct RaftNode {
    cfg: RaftConfig,
    pub(crate) bugs: Bugs,
    rng: ChaCha8Rng,

    // Durable state (mirrored by the writes emitted so far).
    term: u64,
    vote: Option<NodeId>,
    commit: u64,
    log: RaftLog,
    /// The hard state last emitted as a write.
    persisted: HardState,

    applied: u64,
    /// The configuration in force: the latest in the log, committed or not.
    conf: ConfState,
    /// Index of the latest configuration entry (0 if none since the snapshot).
    pending_conf: u64,
    /// The latest snapshot, kept to send to followers that fell behind it.
    snapshot: Option<Snapshot>,
    /// What the leader last said every member holds (`Append::held`),
    /// capped by our commit index: the part of our log no leader will send.
    leader_held: u64,
    /// A follower needs entries whose commands were released, and no
    /// snapshot covers them: the driver should take one.
    wants_snapshot: bool,

    role: Role,
    leader: Option<NodeId>,
    /// Ticks since the last reset (followers: since hearing from a leader;
    /// leader: since the last check-quorum round).
    elapsed: u32,
    /// The randomized election timeout, in `[election_ticks, 2 * election_ticks)`.
    timeout: u32,
    hb_elapsed: u32,
    /// Ticks since boot.
    ticks: u64,
    /// Ticks since this node last heard from a leader (or was one). Starts at
    /// 0 on boot: a restarted node does not know when it last heard from the
    /// leader, whose lease may still be live, so it waits a full timeout. Not
    /// reset by term changes, so a stray higher-term message cannot make a
    /// node forget the lease it promised to honour.
    since_leader: u32,
    /// Until this tick, a failed campaign is tried again within one to three
    /// ticks rather than a whole election timeout: set when the driver says
    /// the leader is gone (`leader_unreachable`). A peer that has not yet
    /// noticed ignores the first pre-vote (it still honours the dead
    /// leader's lease), and waiting out a full timeout after that cost a
    /// second or two of the chaos runs' leader kills.
    quick_until: u64,
    votes: BTreeMap<NodeId, bool>,
    campaign_transfer: bool,

    // Leader state.
    prs: BTreeMap<NodeId, Progress>,
    transfer: Option<Transfer>,
    read_seq: u64,
    round_wanted: bool,
    /// `(ctx, tick sent)` of heartbeat rounds not yet known to be quorum-acked.
    rounds: VecDeque<(u64, u64)>,
    reads_waiting_commit: Vec<(u64, Option<NodeId>)>,
    reads: Vec<PendingRead>,

    // Follower state: reads asked of the leader, by the id on the wire,
    // with the callers' ids, the leader asked and the tick they were asked
    // at. One request is in flight to a leader at a time; the reads that
    // come meanwhile wait in `queued_reads` and go as one request when its
    // answer is in (any index the leader gives then was fixed after each of
    // them began), so a busy follower sends one request per round trip,
    // not one per read.
    asked_reads: BTreeMap<u64, (Vec<u64>, NodeId, u64)>,
    queued_reads: Vec<u64>,
    /// Added to a caller's read id to make the id on the wire: random per
    /// boot, so that a late or duplicated answer to a read of an earlier
    /// life (whose caller numbered its reads from 0 again) never matches a
    /// read of this one. The simulator found exactly that: a stale read.
    read_nonce: u64,

    // Notifications for the application layer.
    ready_reads: Vec<(u64, u64)>,
    /// Reads that got no index (the leader changed or did not answer).
    failed_reads: Vec<u64>,
    stepped_down: bool,
    /// The commit index advanced with this node's own log as the whole
    /// quorum (it is the only voter): it may cover entries of the output
    /// being produced, which are not durable yet. Taken at each settle.
    commit_counted_alone: bool,
    installed: Option<Snapshot>,
}

fn bootstrap_conf(peers: &[NodeId]) -> ConfState {
    let mut voters = peers.to_vec();
    voters.sort_unstable();
    voters.dedup();
    ConfState {
        voters,
        learners: Vec::new(),
    }
}

impl RaftNode {
    /// Boots a node from its durable image (empty for a new node). The core
    /// is driven through [`KvNode`](super::KvNode), which applies what it commits.
    pub fn new(cfg: RaftConfig, disk: &Disk, seed: u64) -> Self {
        assert!(cfg.election_ticks >= 2, "election_ticks must be at least 2");
        assert!(cfg.heartbeat_ticks >= 1 && cfg.heartbeat_ticks < cfg.election_ticks);
        assert!(cfg.max_inflight >= 1 && cfg.max_batch >= 1);
        let meta = match &disk.snapshot {
            Some(s) => s.meta.clone(),
            None => SnapshotMeta {
                index: 0,
                term: 0,
                conf: bootstrap_conf(&cfg.peers),
            },
        };
        let log = RaftLog::new(meta.clone(), disk.entries.clone());
        let commit = disk.hard.commit.max(meta.index).min(log.last_index());
        // The configuration in force is the latest committed one.
        let conf = log.conf_at(commit);
        let pending_conf = log.last_conf_index().unwrap_or(0);
        let hard = HardState {
            term: disk.hard.term.max(log.last_term()),
            vote: disk.hard.vote,
            commit,
        };
        let mut node = RaftNode {
            rng: ChaCha8Rng::seed_from_u64(seed),
            bugs: Bugs::default(),
            term: hard.term,
            vote: if hard.term == disk.hard.term {
                hard.vote
            } else {
                None
            },
            commit,
            persisted: disk.hard,
            applied: meta.index,
            conf,
            pending_conf,
            snapshot: disk.snapshot.clone(),
            leader_held: 0,
            wants_snapshot: false,
            role: Role::Follower,
            leader: None,
            elapsed: 0,
            timeout: cfg.election_ticks,
            hb_elapsed: 0,
            ticks: 0,
            since_leader: 0,
            quick_until: 0,
            votes: BTreeMap::new(),
            campaign_transfer: false,
            prs: BTreeMap::new(),
            transfer: None,
            read_seq: 0,
            round_wanted: false,
            rounds: VecDeque::new(),
            reads_waiting_commit: Vec::new(),
            asked_reads: BTreeMap::new(),
            queued_reads: Vec::new(),
            read_nonce: 0,
            failed_reads: Vec::new(),
            reads: Vec::new(),
            ready_reads: Vec::new(),
            stepped_down: false,
            commit_counted_alone: false,
            installed: None,
            log,
            cfg,
        };
        node.timeout = node.random_timeout();
        node.read_nonce = node.rng.gen();
        node.check_invariants();
        node
    }

    // ---- accessors -------------------------------------------------------

    pub fn id(&self) -> NodeId {
        self.cfg.id
    }
    pub fn config(&self) -> &RaftConfig {
        &self.cfg
    }
    pub fn term(&self) -> u64 {
        self.term
    }
    pub fn vote(&self) -> Option<NodeId> {
        self.vote
    }
    pub fn role(&self) -> Role {
        self.role
    }
    /// The leader this node believes in (itself when leader).
    pub fn leader(&self) -> Option<NodeId> {
        self.leader
    }
    pub fn commit_index(&self) -> u64 {
        self.commit
    }
    /// Role, term, last entry and commit index in a few words, for
    /// pictures of runs: "leader t3, log 2@t1, commit 1" (the last entry is
    /// index 2, written in term 1).
    pub fn describe(&self) -> String {
        let role = match self.role {
            Role::Follower => "follower",
            Role::PreCandidate => "pre-candidate",
            Role::Candidate => "candidate",
            Role::Leader => "leader",
        };
        let last = self.log.last_index();
        let last_term = self.log.term(last).unwrap_or(0);
        format!(
            "{role} t{}, log {last}@t{last_term}, commit {}",
            self.term, self.commit
        )
    }
    pub fn applied_index(&self) -> u64 {
        self.applied
    }
    pub fn first_index(&self) -> u64 {
        self.log.first_index()
    }
    pub fn last_index(&self) -> u64 {
        self.log.last_index()
    }
    /// The index covered by the latest snapshot (0: none).
    pub fn snapshot_index(&self) -> u64 {
        self.log.snap.index
    }
    /// The term of the entry at `index`, released or whole (`None` when
    /// compacted or beyond the end).
    pub fn entry_term(&self, index: u64) -> Option<u64> {
        (index > self.log.snap.index)
            .then(|| self.log.term(index))
            .flatten()
    }
    /// The whole entry at `index`: `None` when compacted, released (its
    /// command dropped, see [`RaftConfig::release_payloads`]) or beyond the
    /// end.
    pub fn entry(&self, index: u64) -> Option<&Entry> {
        self.log.entry(index)
    }
    pub fn voters(&self) -> Vec<NodeId> {
        self.conf.voters.clone()
    }
    pub fn learners(&self) -> Vec<NodeId> {
        self.conf.learners.clone()
    }
    pub fn conf(&self) -> &ConfState {
        &self.conf
    }
    /// The target of a leadership transfer in progress.
    pub fn transferring_to(&self) -> Option<NodeId> {
        self.transfer.map(|t| t.target)
    }
    /// The leader's view of a follower's match index.
    pub fn match_index(&self, peer: NodeId) -> Option<u64> {
        if peer == self.id() && self.role == Role::Leader {
            return Some(self.log.last_index());
        }
        self.prs.get(&peer).map(|p| p.matched)
    }
    pub fn hard_state(&self) -> HardState {
        HardState {
            term: self.term,
            vote: self.vote,
            commit: self.commit,
        }
    }
    /// Whether this node may campaign: only voters of the configuration in
    /// force (the latest committed one) do. A voter whose removal is appended
    /// but not committed still campaigns: it may hold the longest log, and the
    /// other voters may need it to elect a leader that commits the change.
    pub fn promotable(&self) -> bool {
        self.conf.is_voter(self.id())
    }

    /// Whether this leader has appended its own removal (committed or not).
    /// It then takes no new proposals, so that when it steps down its log ends
    /// with the removal and it can vote for any voter that holds it.
    fn leaving(&self) -> bool {
        !self
            .log
            .conf_at(self.pending_conf.max(self.commit))
            .is_voter(self.id())
    }
    /// Whether a configuration change is appended but not yet committed.
    pub fn conf_change_pending(&self) -> bool {
        self.pending_conf > self.commit
    }
    /// Whether this leader's appends and heartbeats may leave before the
    /// writes of the call that produced them are durable (they are marked
    /// [`crate::sansio::Envelope::early`]). A follower acknowledges only
    /// what it made durable itself, and the commit index they carry cannot
    /// count entries of the unsynced output, since those are acknowledged
    /// only later — unless the leader is the only voter, which counts itself
    /// alone.
    fn sends_early(&self) -> bool {
        self.role == Role::Leader && self.conf.voters.len() > 1
    }

    /// Whether the leader has committed an entry of its own term.
    pub fn committed_own_term(&self) -> bool {
        self.log.term(self.commit) == Some(self.term)
    }

    // ---- notifications for the application -------------------------------

    /// The next committed entry to apply, advancing the applied index.
    pub fn next_committed(&mut self) -> Option<Entry> {
        if self.applied >= self.commit {
            return None;
        }
        let e = self
            .log
            .entry(self.applied + 1)
            .cloned()
            .expect("committed entry missing from the log");
        self.applied += 1;
        Some(e)
    }
    pub fn take_ready_reads(&mut self) -> Vec<(u64, u64)> {
        std::mem::take(&mut self.ready_reads)
    }
    /// Reads started on this follower that will get no read index: the
    /// leader changed, refused, or did not answer within an election
    /// timeout. The caller may try them again.
    pub fn take_failed_reads(&mut self) -> Vec<u64> {
        std::mem::take(&mut self.failed_reads)
    }
    pub fn take_stepped_down(&mut self) -> bool {
        std::mem::take(&mut self.stepped_down)
    }
    /// Whether what this node applies now may rest on writes of the output
    /// being produced: it leads as the only voter, or the commit index
    /// advanced on its own log alone since the last call. Anything else it
    /// applies was acknowledged durable by a quorum (a leader's own entries
    /// included: an entry counts only once a follower acknowledged it, so it
    /// was written by an earlier output). Clears the latter.
    pub fn take_applies_unsynced(&mut self) -> bool {
        let alone = std::mem::take(&mut self.commit_counted_alone);
        let sole_voter = self.role == Role::Leader && self.conf.voters == [self.id()];
        alone || sole_voter
    }
    pub fn take_installed(&mut self) -> Option<Snapshot> {
        self.installed.take()
    }

    /// Whether a follower waits for a snapshot newer than the latest one,
    /// because the entries after it were released
    /// ([`RaftConfig::release_payloads`]). The driver answers with
    /// [`RaftNode::compact_at`] at its applied index.
    pub fn wants_snapshot(&self) -> bool {
        self.wants_snapshot && self.applied > self.log.snap.index
    }

    /// The last entry whose command was dropped from the log.
    pub fn released_index(&self) -> u64 {
        self.log.released()
    }

    // ---- helpers ----------------------------------------------------------

    fn random_timeout(&mut self) -> u32 {
        let e = self.cfg.election_ticks;
        self.rng.gen_range(e..2 * e)
    }

    /// The lowest index every other member acknowledged in this term: what
    /// a leader tells followers in `Append::held`.
    fn held_by_all(&self) -> u64 {
        self.prs
            .values()
            .map(|p| p.matched)
            .min()
            .unwrap_or(self.commit)
            .min(self.commit)
    }

    /// How far this node may drop commands from its log: applied here, and
    /// held by every member so that no leader, this one or a later one,
    /// needs to send them. A member added later, or one behind a later
    /// leader whose view is older, gets a snapshot instead.
    fn release_bound(&self) -> u64 {
        if !self.cfg.release_payloads {
            return 0;
        }
        let held = if self.role == Role::Leader {
            self.held_by_all()
        } else {
            self.leader_held
        };
        held.min(self.applied)
    }

    fn quorum(&self) -> usize {
        self.conf.quorum()
    }

    /// Emits the hard state if it changed since it was last emitted.
    fn persist_hard(&mut self, out: &mut Out) {
        let hs = self.hard_state();
        if hs == self.persisted {
            return;
        }
        let commit_only = (hs.term, hs.vote) == (self.persisted.term, self.persisted.vote);
        if commit_only || self.bugs.lazy_votes {
            out.persist(Write::Commit(hs));
        } else {
            out.persist(Write::HardState(hs));
        }
        self.persisted = hs;
    }

    /// Whether this node heard from a leader recently enough that it must not
    /// help depose it.
    fn in_lease(&self) -> bool {
        self.cfg.check_quorum
            && (self.role == Role::Leader || self.since_leader < self.cfg.election_ticks)
    }

    /// Whether a candidate's log is at least as up to date as ours.
    fn log_ok(&self, last_index: u64, last_term: u64) -> bool {
        last_term > self.log.last_term()
            || (last_term == self.log.last_term() && last_index >= self.log.last_index())
    }

    fn reset(&mut self, term: u64) {
        if term != self.term {
            self.term = term;
            self.vote = None;
        }
        self.leader = None;
        self.elapsed = 0;
        self.hb_elapsed = 0;
        self.timeout = self.random_timeout();
        self.votes.clear();
        self.campaign_transfer = false;
        self.transfer = None;
        self.prs.clear();
        self.rounds.clear();
        self.round_wanted = false;
        self.reads.clear();
        self.reads_waiting_commit.clear();
        self.fail_asked_reads();
    }

    fn fail_asked_reads(&mut self) {
        let asked = std::mem::take(&mut self.asked_reads);
        self.failed_reads
            .extend(asked.into_values().flat_map(|(callers, _, _)| callers));
        self.failed_reads.append(&mut self.queued_reads);
    }

    /// Asks `leader` for one read index for the reads of `callers`.
    fn ask_leader(&mut self, leader: NodeId, callers: Vec<u64>, out: &mut Out) {
        let first = *callers.first().expect("a read to ask for");
        let wire = self.read_nonce.wrapping_add(first);
        self.asked_reads.insert(wire, (callers, leader, self.ticks));
        out.send(
            leader,
            Message::ReadIndex {
                term: self.term,
                id: wire,
            },
        );
    }

    /// Once no request is in flight to the leader, asks for the reads that
    /// waited; without a leader to ask, they fail (the caller may retry).
    fn ask_queued_reads(&mut self, out: &mut Out) {
        if self.queued_reads.is_empty() {
            return;
        }
        match (self.role, self.leader) {
            (Role::Follower, Some(leader)) if leader != self.cfg.id => {
                if !self.asked_reads.values().any(|(_, l, _)| *l == leader) {
                    let callers = std::mem::take(&mut self.queued_reads);
                    self.ask_leader(leader, callers, out);
                }
            }
            _ => self.failed_reads.append(&mut self.queued_reads),
        }
    }

    fn become_follower(&mut self, term: u64, leader: Option<NodeId>, out: &mut Out) {
        if self.role == Role::Leader {
            self.stepped_down = true;
        }
        self.reset(term);
        self.role = Role::Follower;
        self.leader = leader;
        self.persist_hard(out);
    }

    fn campaign(&mut self, pre: bool, transfer: bool, out: &mut Out) {
        if !self.promotable() {
            return;
        }
        if self.role == Role::Leader {
            self.stepped_down = true;
        }
        let ask_term = if pre {
            let t = self.term;
            self.reset(t);
            self.role = Role::PreCandidate;
            t + 1
        } else {
            let t = self.term + 1;
            self.reset(t);
            self.role = Role::Candidate;
            self.vote = Some(self.id());
            self.persist_hard(out);
            t
        };
        self.campaign_transfer = transfer;
        if self.ticks < self.quick_until {
            self.campaign_soon();
        }
        self.votes.insert(self.id(), true);
        if self.poll(out) {
            return;
        }
        let (last_index, last_term) = (self.log.last_index(), self.log.last_term());
        let (commit, commit_term) = self.commit_mark();
        for v in self.conf.voters.clone() {
            if v == self.id() {
                continue;
            }
            let msg = if pre {
                Message::PreVote {
                    term: ask_term,
                    last_index,
                    last_term,
                    commit,
                    commit_term,
                }
            } else {
                Message::Vote {
                    term: ask_term,
                    last_index,
                    last_term,
                    commit,
                    commit_term,
                    transfer,
                }
            };
            out.send(v, msg);
        }
    }

    /// Counts votes; acts on a decided election. Returns whether it was decided.
    fn poll(&mut self, out: &mut Out) -> bool {
        let q = self.quorum();
        let voters = &self.conf.voters;
        let granted = self
            .votes
            .iter()
            .filter(|(id, g)| **g && voters.contains(id))
            .count();
        let rejected = self
            .votes
            .iter()
            .filter(|(id, g)| !**g && voters.contains(id))
            .count();
        if granted >= q {
            match self.role {
                Role::PreCandidate => {
                    let transfer = self.campaign_transfer;
                    self.campaign(false, transfer, out)
                }
                Role::Candidate => self.become_leader(out),
                _ => {}
            }
            true
        } else if rejected >= q {
            let t = self.term;
            self.become_follower(t, None, out);
            true
        } else {
            false
        }
    }

    fn become_leader(&mut self, out: &mut Out) {
        let t = self.term;
        self.reset(t);
        self.role = Role::Leader;
        self.leader = Some(self.id());
        self.quick_until = 0;
        let next = self.log.last_index() + 1;
        for m in self.conf.members().collect::<Vec<_>>() {
            if m != self.id() {
                self.prs.insert(m, Progress::new(next, self.ticks));
            }
        }
        out.emit(RaftEvent::BecameLeader { term: t });
        self.append(EntryData::Empty, out);
    }

    /// The leader appends one entry of its term and starts replicating it.
    fn append(&mut self, data: EntryData, out: &mut Out) -> u64 {
        debug_assert_eq!(self.role, Role::Leader);
        let index = self.log.last_index() + 1;
        let entry = Entry {
            index,
            term: self.term,
            data,
        };
        if matches!(entry.data, EntryData::Config(_)) {
            // It takes effect once committed (see `sync_conf`).
            self.pending_conf = index;
        }
        let dropped = self.log.append(std::slice::from_ref(&entry));
        assert_eq!(dropped, 0, "a leader never overwrites its own log");
        // The leader's own match index is its last index from here on: see the
        // module docs for why counting the not-yet-synced write is safe.
        out.persist(Write::Entries(vec![entry]));
        self.bcast_append(false, out);
        self.maybe_commit(out);
        index
    }

    /// Another node knows entries up to `commit` (of `commit_term`) are
    /// committed. If this log holds that entry, it holds the same entries up
    /// to it (log matching), so they are committed here too.
    fn learn_commit(&mut self, commit: u64, commit_term: u64) {
        // A leader learns its commit index from its own quorum only.
        if self.role != Role::Leader
            && commit > self.commit
            && self.log.term(commit) == Some(commit_term)
        {
            self.commit = commit;
            self.sync_conf();
        }
    }

    /// The commit index and the term of the entry there, as vote messages
    /// carry them (see [`Message::PreVote`]).
    fn commit_mark(&self) -> (u64, u64) {
        let term = self
            .log
            .term(self.commit)
            .expect("the commit index is in the log");
        (self.commit, term)
    }

    /// [`Self::learn_commit`]; a (pre-)candidate that learns a configuration
    /// with no vote for it stops campaigning. Returns whether a campaign
    /// goes on. (Counting the votes in the newer configuration
    /// is safe: with one change at a time, any majority of it and any
    /// majority of the one before share a voter, who votes once a term.)
    fn learn_commit_in_campaign(&mut self, commit: u64, commit_term: u64, out: &mut Out) -> bool {
        self.learn_commit(commit, commit_term);
        let campaigning = matches!(self.role, Role::PreCandidate | Role::Candidate);
        if !campaigning || self.promotable() {
            return true;
        }
        let t = self.term;
        self.become_follower(t, None, out);
        false
    }

    /// Puts the latest committed configuration in force. A configuration entry
    /// takes effect when it is committed, not when it is appended: with at most
    /// one uncommitted change at a time, every node is then in one of two
    /// adjacent configurations, whose majorities always intersect. (Taking
    /// effect on append, as the Raft dissertation does, let the simulator wedge
    /// a cluster: a node holding an uncommitted promotion needed the vote of a
    /// learner whose log was newer but which, by its own log, could not
    /// campaign.) Taking effect on commit needs every node to learn commits
    /// even when the leader that knew them is gone: see `learn_commit`.
    fn sync_conf(&mut self) {
        let c = self.log.conf_at(self.commit);
        if c != self.conf {
            self.apply_conf(c);
        }
    }

    fn apply_conf(&mut self, conf: ConfState) {
        self.conf = conf;
        if self.role == Role::Leader {
            let next = self.log.last_index() + 1;
            let members: Vec<NodeId> = self.conf.members().filter(|m| *m != self.cfg.id).collect();
            self.prs.retain(|id, _| members.contains(id));
            for m in members {
                let tick = self.ticks;
                self.prs
                    .entry(m)
                    .or_insert_with(|| Progress::new(next, tick));
            }
            if self.transfer.is_some_and(|t| !self.conf.is_voter(t.target)) {
                self.transfer = None;
            }
        }
    }

    // ---- leader: replication ------------------------------------------------

    /// Sends one `Append` (or snapshot) to `to` if its progress allows. Returns
    /// whether something carrying entries or a snapshot was sent.
    fn send_append(&mut self, to: NodeId, allow_empty: bool, out: &mut Out) -> bool {
        let max_inflight = self.cfg.max_inflight;
        let early = self.sends_early();
        let held = self.held_by_all();
        let Some(pr) = self.prs.get_mut(&to) else {
            return false;
        };
        if !pr.can_send(max_inflight) {
            return false;
        }
        pr.next = pr.next.min(self.log.last_index() + 1);
        let prev_index = pr.next - 1;
        let released = self.log.released();
        let entries_held = pr.next > released || self.bugs.send_released;
        let prev_term = self.log.term(prev_index).filter(|_| entries_held);
        let Some(prev_term) = prev_term else {
            // Compacted or released: only a snapshot can bring this follower
            // up to date, and one that covers every released entry.
            let snap = self
                .snapshot
                .as_ref()
                .filter(|s| s.meta.index >= released)
                .cloned();
            let Some(snap) = snap else {
                assert!(
                    released > self.log.snap.index,
                    "log compacted without a snapshot"
                );
                self.wants_snapshot = true;
                return false;
            };
            pr.state = ProgressState::Snapshot(snap.meta.index);
            pr.progress_tick = self.ticks;
            pr.inflight.clear();
            out.send(
                to,
                Message::InstallSnapshot {
                    term: self.term,
                    snapshot: Box::new(snap),
                },
            );
            return true;
        };
        let entries = if self.bugs.send_released {
            self.log.slice_with_released(pr.next, self.cfg.max_batch)
        } else {
            self.log.slice(pr.next, self.cfg.max_batch)
        };
        if entries.is_empty() && !allow_empty {
            return false;
        }
        let last = prev_index + entries.len() as u64;
        let carried = !entries.is_empty();
        pr.sent(last, carried);
        let msg = Message::Append {
            term: self.term,
            prev_index,
            prev_term,
            entries,
            commit: self.commit,
            held,
        };
        out.send_with(to, msg, early);
        carried
    }

    /// Sends every follower what its pipeline allows; with `notify`, followers
    /// that get nothing else get an empty `Append` carrying the commit index.
    fn bcast_append(&mut self, notify: bool, out: &mut Out) {
        let peers: Vec<NodeId> = self.prs.keys().copied().collect();
        for p in peers {
            let mut sent = false;
            while self.send_append(p, false, out) {
                sent = true;
                if self
                    .prs
                    .get(&p)
                    .is_some_and(|pr| pr.state != ProgressState::Replicate)
                {
                    break;
                }
            }
            if !sent && notify {
                self.send_append(p, true, out);
            }
        }
    }

    fn bcast_heartbeat(&mut self, out: &mut Out) {
        self.read_seq += 1;
        self.rounds.push_back((self.read_seq, self.ticks));
        if self.rounds.len() > 4096 {
            self.rounds.pop_front();
        }
        self.round_wanted = false;
        let early = self.sends_early();
        let held = self.held_by_all();
        for (&p, pr) in &self.prs {
            let commit = self.commit.min(pr.matched);
            let msg = Message::Heartbeat {
                term: self.term,
                commit,
                ctx: self.read_seq,
                held,
            };
            out.send_with(p, msg, early);
        }
    }

    /// Advances the commit index to the highest index stored on a quorum of
    /// voters, if it is of the current term.
    fn maybe_commit(&mut self, out: &mut Out) -> bool {
        let mut matches: Vec<u64> = self
            .conf
            .voters
            .iter()
            .map(|v| {
                if *v == self.cfg.id {
                    self.log.last_index()
                } else {
                    self.prs.get(v).map_or(0, |p| p.matched)
                }
            })
            .collect();
        if matches.is_empty() {
            return false;
        }
        matches.sort_unstable_by(|a, b| b.cmp(a));
        let m = matches[self.quorum() - 1];
        if m <= self.commit {
            return false;
        }
        if self.log.term(m) != Some(self.term) && !self.bugs.commit_old_term_by_counting {
            // Raft §5.4.2: entries of earlier terms are committed only
            // indirectly, by committing one of the current term after them.
            return false;
        }
        if self.quorum() == 1 {
            self.commit_counted_alone = true;
        }
        self.commit = m;
        self.on_commit_advanced(out);
        true
    }

    fn on_commit_advanced(&mut self, out: &mut Out) {
        self.sync_conf();
        if self.committed_own_term() && !self.reads_waiting_commit.is_empty() {
            for (id, from) in std::mem::take(&mut self.reads_waiting_commit) {
                self.register_read(id, from, out);
            }
        }
        // Tell the followers first: they put the new configuration in force
        // only when they learn it is committed.
        self.bcast_append(true, out);
        self.maybe_hand_over(out);
    }

    /// Stops leading once our own removal is committed and a quorum of the
    /// remaining voters hold it. Stepping down as soon as it commits (on the
    /// old configuration's quorum, which may include only one of the new
    /// voters) could leave every remaining voter without the removal while
    /// this node, the one with the longest log, no longer campaigns and
    /// refuses them its vote: nobody could be elected. We are not a voter,
    /// so afterwards we stay an idle follower (one that still answers votes).
    fn maybe_hand_over(&mut self, out: &mut Out) {
        if self.role != Role::Leader
            || self.pending_conf > self.commit
            || self.conf.is_voter(self.cfg.id)
        {
            return;
        }
        let holding = self
            .conf
            .voters
            .iter()
            .filter(|v| {
                self.prs
                    .get(v)
                    .is_some_and(|p| p.matched >= self.pending_conf)
            })
            .count();
        if holding >= self.quorum() {
            let t = self.term;
            self.become_follower(t, None, out);
        }
    }

    fn on_append_resp(
        &mut self,
        from: NodeId,
        success: bool,
        index: u64,
        hint: Option<RejectHint>,
        out: &mut Out,
    ) {
        let tick = self.ticks;
        let Some(pr) = self.prs.get_mut(&from) else {
            return;
        };
        pr.recent_active = true;
        if success {
            let news = pr.ack(index, tick);
            match pr.state {
                ProgressState::Probe => pr.become_replicate(tick),
                ProgressState::Snapshot(si) if pr.matched >= si => pr.become_replicate(tick),
                _ => {}
            }
            if news && !self.maybe_commit(out) {
                self.maybe_hand_over(out);
            }
            if self.role != Role::Leader {
                return;
            }
            if let Some(t) = self.transfer {
                if t.target == from
                    && self
                        .prs
                        .get(&from)
                        .is_some_and(|p| p.matched == self.log.last_index())
                {
                    out.send(from, Message::TimeoutNow { term: self.term });
                }
            }
            self.bcast_one(from, out);
        } else {
            let stale =
                index <= pr.matched || (pr.state == ProgressState::Probe && index + 1 != pr.next);
            if stale {
                return;
            }
            let next = match hint {
                None | Some(RejectHint { term: None, .. }) => hint.map_or(index, |h| h.index + 1),
                Some(RejectHint {
                    term: Some(t),
                    index: fi,
                }) => match self.log.last_index_with_term_at_most(t, index) {
                    Some(i) if self.log.term(i) == Some(t) => i + 1,
                    Some(i) => fi.min(i + 1),
                    None => fi,
                },
            };
            let pr = self.prs.get_mut(&from).expect("checked above");
            pr.next = next.min(index).max(pr.matched + 1);
            pr.become_probe(tick);
            self.send_append(from, false, out);
        }
    }

    /// Sends `to` whatever its pipeline allows.
    fn bcast_one(&mut self, to: NodeId, out: &mut Out) {
        while self.send_append(to, false, out) {
            if self
                .prs
                .get(&to)
                .is_some_and(|pr| pr.state != ProgressState::Replicate)
            {
                break;
            }
        }
    }

    fn on_heartbeat_resp(&mut self, from: NodeId, ctx: u64, out: &mut Out) {
        let tick = self.ticks;
        let last = self.log.last_index();
        let stall = u64::from((self.cfg.election_ticks / 2).max(2));
        let Some(pr) = self.prs.get_mut(&from) else {
            return;
        };
        pr.recent_active = true;
        pr.acked_ctx = pr.acked_ctx.max(ctx);
        match pr.state {
            ProgressState::Probe => pr.paused = false,
            ProgressState::Replicate if pr.matched < last && tick - pr.progress_tick >= stall => {
                // Acks stopped although the follower is alive: appends were
                // lost. Start over from what it is known to hold.
                pr.next = pr.matched + 1;
                pr.become_probe(tick);
            }
            ProgressState::Snapshot(_)
                if tick - pr.progress_tick >= u64::from(self.cfg.election_ticks) =>
            {
                pr.next = pr.matched + 1;
                pr.become_probe(tick);
            }
            _ => {}
        }
        if pr.matched < last || pr.state == ProgressState::Probe {
            self.send_append(from, pr_needs_empty(self.prs.get(&from)), out);
        }
        self.advance_reads(out);
    }

    // ---- leader: reads -----------------------------------------------------

    /// The highest heartbeat round acknowledged by a quorum of voters.
    fn quorum_acked_ctx(&self) -> u64 {
        let mut acks: Vec<u64> = self
            .conf
            .voters
            .iter()
            .map(|v| {
                if *v == self.cfg.id {
                    self.read_seq
                } else {
                    self.prs.get(v).map_or(0, |p| p.acked_ctx)
                }
            })
            .collect();
        if acks.is_empty() {
            return 0;
        }
        acks.sort_unstable_by(|a, b| b.cmp(a));
        acks[self.quorum() - 1]
    }

    fn advance_reads(&mut self, out: &mut Out) {
        let qc = self.quorum_acked_ctx();
        while self.rounds.len() > 1 && self.rounds[1].0 <= qc {
            self.rounds.pop_front();
        }
        let (ready, waiting): (Vec<PendingRead>, Vec<PendingRead>) = self
            .reads
            .iter()
            .partition(|r| r.ctx <= qc || self.confirmed_with_asker(r.from, r.ctx));
        self.reads = waiting;
        for r in ready {
            self.read_ready(r.id, r.from, r.index, out);
        }
        if self.round_wanted && qc >= self.read_seq {
            self.bcast_heartbeat(out);
        }
    }

    fn lease_valid(&self) -> bool {
        if !(self.cfg.lease_reads && self.cfg.check_quorum) || self.transfer.is_some() {
            return false;
        }
        let qc = self.quorum_acked_ctx();
        if qc == 0 {
            return false;
        }
        let Some(&(_, sent)) = self.rounds.iter().find(|(c, _)| *c == qc) else {
            return false;
        };
        // Followers refuse votes for more than `election_ticks - 1` of their
        // ticks after receiving the round; two ticks of margin absorb the
        // tick phase and bounded clock drift (see the module docs).
        self.ticks + 2 < sent + u64::from(self.cfg.election_ticks)
    }

    /// The driver learned that `leader` is gone (its process closed every
    /// connection, as a dead process does): stop trusting it and campaign
    /// within a few ticks instead of waiting out a whole election timeout.
    /// Safe whatever the truth: it only moves this node's timers, and if the
    /// leader is in fact alive, the others, still hearing from it, ignore
    /// the pre-vote. Returns whether it applied (this node followed
    /// `leader`).
    pub fn leader_unreachable(&mut self, leader: NodeId) -> bool {
        if self.role != Role::Follower || self.leader != Some(leader) {
            return false;
        }
        self.since_leader = self.cfg.election_ticks;
        self.quick_until = self.ticks + u64::from(self.cfg.election_ticks);
        self.campaign_soon();
        true
    }

    /// Leaves one to three ticks before the next campaign, spread by the
    /// node's own random timeout so that the followers do not all campaign
    /// in the same tick.
    fn campaign_soon(&mut self) {
        let spread = self.timeout.saturating_sub(self.cfg.election_ticks) % 3;
        self.elapsed = self.elapsed.max(self.timeout.saturating_sub(1 + spread));
    }

    /// Starts a linearizable read with id `id` (chosen by the caller). Its
    /// read index is reported by `take_ready_reads` once leadership is
    /// confirmed: the leader confirms its own, a follower asks its leader
    /// (and reports a read that gets no index in `take_failed_reads`).
    /// Returns false if this node has no leader to ask.
    pub fn read_index(&mut self, id: u64, out: &mut Out) -> bool {
        match (self.role, self.leader) {
            (Role::Leader, _) => {
                self.leader_read(id, None, out);
                true
            }
            (Role::Follower, Some(leader)) if leader != self.cfg.id => {
                if self.bugs.follower_reads_own_commit {
                    self.ready_reads.push((id, self.commit));
                    return true;
                }
                self.queued_reads.push(id);
                self.ask_queued_reads(out);
                true
            }
            _ => false,
        }
    }

    fn leader_read(&mut self, id: u64, from: Option<NodeId>, out: &mut Out) {
        if !self.committed_own_term() {
            // The commit index of a new leader may lag the true one until it
            // commits an entry of its own term.
            self.reads_waiting_commit.push((id, from));
            return;
        }
        self.register_read(id, from, out);
    }

    /// A read's index is known: this node's own read is ready; a follower's
    /// is sent to it.
    fn read_ready(&mut self, id: u64, from: Option<NodeId>, index: u64, out: &mut Out) {
        match from {
            None => self.ready_reads.push((id, index)),
            Some(f) => out.send(
                f,
                Message::ReadIndexResp {
                    term: self.term,
                    id,
                    index: Some(index),
                },
            ),
        }
    }

    /// Whether a follower's read whose round is `ctx` is confirmed with the
    /// follower counted as one acknowledgement: it takes the answer only while
    /// still in this term, so it, this node (leading when the read arrived)
    /// and the voters that acknowledged a round from `ctx` on all voted for no
    /// later leader before the read arrived; if they are a quorum, no later
    /// leader existed then (see "Reads" in the module docs). With two or
    /// three voters the follower and this node are a quorum at once, and the
    /// read needs no round at all.
    fn confirmed_with_asker(&self, from: Option<NodeId>, ctx: u64) -> bool {
        let Some(f) = from.filter(|f| *f != self.cfg.id) else {
            return false;
        };
        if self.bugs.asker_confirms_alone {
            return true;
        }
        if !self.conf.is_voter(f) {
            return false;
        }
        let confirmed = self
            .conf
            .voters
            .iter()
            .filter(|v| {
                **v == self.cfg.id
                    || **v == f
                    || self.prs.get(v).is_some_and(|p| p.acked_ctx >= ctx)
            })
            .count();
        confirmed >= self.quorum()
    }

    fn register_read(&mut self, id: u64, from: Option<NodeId>, out: &mut Out) {
        let index = self.commit;
        let ctx = self.read_seq + 1;
        if self.conf.voters == [self.cfg.id]
            || self.lease_valid()
            || self.confirmed_with_asker(from, ctx)
        {
            self.read_ready(id, from, index, out);
            return;
        }
        self.reads.push(PendingRead {
            id,
            from,
            index,
            ctx,
        });
        if self.quorum_acked_ctx() >= self.read_seq {
            self.bcast_heartbeat(out);
        } else {
            self.round_wanted = true;
        }
    }

    // ---- leader: proposals -----------------------------------------------

    /// Appends `data` if this node is a leader accepting proposals. Returns the
    /// new entry's `(index, term)`.
    pub fn propose(&mut self, data: EntryData, out: &mut Out) -> Option<(u64, u64)> {
        if self.role != Role::Leader || self.transfer.is_some() || self.leaving() {
            return None;
        }
        let index = self.append(data, out);
        Some((index, self.term))
    }

    /// Proposes a membership change. Refused (returns false) unless this node
    /// is the leader, has committed an entry of its term, and no other change
    /// is uncommitted; or when the change makes no sense.
    pub fn propose_conf(&mut self, change: ConfChange, out: &mut Out) -> bool {
        if self.role != Role::Leader
            || self.transfer.is_some()
            || !self.committed_own_term()
            || self.pending_conf > self.commit
        {
            return false;
        }
        let mut c = self.conf.clone();
        match change {
            ConfChange::AddVoter(n) => {
                if c.is_voter(n) {
                    return false;
                }
                c.learners.retain(|x| *x != n);
                c.voters.push(n);
            }
            ConfChange::AddLearner(n) => {
                if c.contains(n) {
                    return false;
                }
                c.learners.push(n);
            }
            ConfChange::PromoteLearner(n) => {
                if !c.is_learner(n) {
                    return false;
                }
                c.learners.retain(|x| *x != n);
                c.voters.push(n);
            }
            ConfChange::RemoveNode(n) => {
                if !c.contains(n) || c.voters == [n] {
                    return false;
                }
                c.voters.retain(|x| *x != n);
                c.learners.retain(|x| *x != n);
            }
        }
        c.voters.sort_unstable();
        c.learners.sort_unstable();
        self.append(EntryData::Config(c), out);
        true
    }

    /// Starts handing leadership to `target`. Returns false if impossible.
    pub fn transfer_leader(&mut self, target: NodeId, out: &mut Out) -> bool {
        if self.role != Role::Leader || target == self.cfg.id || !self.conf.is_voter(target) {
            return false;
        }
        if self.transfer.is_some_and(|t| t.target == target) {
            return true;
        }
        self.transfer = Some(Transfer {
            target,
            started: self.ticks,
        });
        if self
            .prs
            .get(&target)
            .is_some_and(|p| p.matched == self.log.last_index())
        {
            out.send(target, Message::TimeoutNow { term: self.term });
        } else {
            self.send_append(target, false, out);
        }
        true
    }

    // ---- snapshots ---------------------------------------------------------

    /// Snapshots the application state `store` (as of the applied index) and
    /// drops the log up to it.
    pub fn compact(&mut self, data: Payload, out: &mut Out) {
        self.compact_at(self.applied, data, out);
    }

    /// Snapshots `data`, the application state as of applied entry `index`
    /// (encoded while later entries were being applied), and drops the log
    /// up to it. Ignored if the node has a snapshot at or beyond `index`
    /// already, or has not applied `index` (a job of an earlier life).
    pub fn compact_at(&mut self, index: u64, data: Payload, out: &mut Out) {
        if index <= self.log.snap.index || index > self.applied {
            return;
        }
        let meta = self.snapshot_meta_at(index).expect("applied entry missing");
        let snap = Snapshot {
            meta: meta.clone(),
            data,
        };
        self.log.restore(meta);
        out.persist(Write::Snapshot(snap.clone()));
        self.snapshot = Some(snap);
        if index >= self.log.released() {
            self.wants_snapshot = false;
        }
    }

    /// The metadata [`RaftNode::compact_at`] would give a snapshot at applied
    /// entry `index`, so that a driver can write the snapshot's file while
    /// it encodes the data; `None` where `compact_at` would ignore it.
    pub fn snapshot_meta_at(&self, index: u64) -> Option<SnapshotMeta> {
        if index <= self.log.snap.index || index > self.applied {
            return None;
        }
        Some(SnapshotMeta {
            index,
            term: self.log.term(index)?,
            conf: self.log.conf_at(index),
        })
    }

    /// Swaps the data of the snapshot this node keeps (to send to followers
    /// that fall behind it) for the same bytes held elsewhere: the driver's
    /// durable snapshot file, mapped into memory, so the member's heap does
    /// not carry a second copy of its whole state. Returns whether the node
    /// holds the snapshot at `index` (a newer one may have replaced it).
    pub fn share_snapshot_data(&mut self, index: u64, data: Payload) -> bool {
        match &mut self.snapshot {
            Some(s) if s.meta.index == index => {
                assert_eq!(
                    s.data.0.len(),
                    data.0.len(),
                    "the snapshot at {index} swapped for data of another length"
                );
                s.data = data;
                true
            }
            _ => false,
        }
    }

    fn on_install_snapshot(&mut self, from: NodeId, snap: Snapshot, out: &mut Out) {
        let idx = snap.meta.index;
        if idx <= self.commit {
            out.send(from, self.append_ok(self.commit));
            return;
        }
        if self.log.matches(idx, snap.meta.term) {
            // We hold the entries; they will be applied the usual way.
            self.commit = idx;
            self.sync_conf();
            out.send(from, self.append_ok(idx));
            return;
        }
        self.log.restore(snap.meta.clone());
        self.commit = idx;
        self.applied = idx;
        self.conf = snap.meta.conf.clone();
        self.pending_conf = 0;
        out.persist(Write::Snapshot(snap.clone()));
        self.snapshot = Some(snap.clone());
        self.installed = Some(snap);
        self.persist_hard(out);
        out.send(from, self.append_ok(idx));
    }

    fn append_ok(&self, index: u64) -> Message {
        Message::AppendResp {
            term: self.term,
            success: true,
            index,
            hint: None,
        }
    }

    // ---- follower: replication ----------------------------------------------

    fn on_append(
        &mut self,
        from: NodeId,
        prev_index: u64,
        prev_term: u64,
        mut entries: Vec<Entry>,
        commit: u64,
        out: &mut Out,
    ) {
        let (mut prev_index, mut prev_term) = (prev_index, prev_term);
        if prev_index < self.commit {
            // Everything up to our commit index matches every later leader.
            let skip = (self.commit - prev_index) as usize;
            if skip >= entries.len() {
                out.send(from, self.append_ok(self.commit));
                return;
            }
            entries.drain(..skip);
            prev_index = self.commit;
            prev_term = self
                .log
                .term(prev_index)
                .expect("commit index within the log");
        }
        if !self.log.matches(prev_index, prev_term) {
            let hint = match self.log.term(prev_index) {
                None => RejectHint {
                    term: None,
                    index: self.log.last_index(),
                },
                Some(t) => RejectHint {
                    term: Some(t),
                    index: self.log.first_index_of_term(prev_index),
                },
            };
            out.send(
                from,
                Message::AppendResp {
                    term: self.term,
                    success: false,
                    index: prev_index,
                    hint: Some(hint),
                },
            );
            return;
        }
        let last_new = prev_index + entries.len() as u64;
        if let Some(i) = self.log.find_conflict(&entries) {
            let suffix = &entries[i..];
            assert!(
                suffix[0].index > self.commit,
                "node {} would overwrite committed entry {}",
                self.cfg.id,
                suffix[0].index
            );
            let dropped = self.log.append(suffix);
            let has_conf = suffix
                .iter()
                .any(|e| matches!(e.data, EntryData::Config(_)));
            if dropped > 0 || has_conf {
                // Only uncommitted entries were replaced, so the configuration
                // in force is unchanged; the pending one may have changed.
                self.pending_conf = self.log.last_conf_index().unwrap_or(0);
            }
            if !self.bugs.reply_before_persist {
                out.persist(Write::Entries(suffix.to_vec()));
            }
        }
        let c = commit.min(last_new);
        if c > self.commit {
            self.commit = c;
            self.sync_conf();
        }
        out.send(from, self.append_ok(last_new));
    }

    // ---- the three entry points ----------------------------------------------

    /// Handles a message from a peer.
    pub fn step(&mut self, from: NodeId, msg: Message, out: &mut Out) {
        if msg.check().is_err() {
            // Not something a correct peer sends: never let it reach the
            // log (drivers check first, to log it and drop the connection).
            return;
        }
        let before = self.snapshot_for_checks();
        self.step_inner(from, msg, out);
        self.finish(before, out);
    }

    /// One tick of logical time.
    pub fn tick(&mut self, out: &mut Out) {
        let before = self.snapshot_for_checks();
        self.tick_inner(out);
        self.finish(before, out);
    }

    /// Runs `f` as one step, then persists and checks invariants.
    pub fn with_step<R>(&mut self, out: &mut Out, f: impl FnOnce(&mut Self, &mut Out) -> R) -> R {
        let before = self.snapshot_for_checks();
        let r = f(self, out);
        self.finish(before, out);
        r
    }

    fn tick_inner(&mut self, out: &mut Out) {
        self.ticks += 1;
        // A read the leader never answered (the request or the answer was
        // lost): the caller may ask again.
        let limit = u64::from(self.cfg.election_ticks);
        let ticks = self.ticks;
        let late: Vec<u64> = self
            .asked_reads
            .iter()
            .filter(|(_, (_, _, at))| ticks - at >= limit)
            .map(|(wire, _)| *wire)
            .collect();
        for wire in late {
            if let Some((callers, _, _)) = self.asked_reads.remove(&wire) {
                self.failed_reads.extend(callers);
            }
        }
        self.ask_queued_reads(out);
        if self.role == Role::Leader {
            self.since_leader = 0;
            self.elapsed += 1;
            self.hb_elapsed += 1;
            if self
                .transfer
                .is_some_and(|t| self.ticks - t.started >= u64::from(self.cfg.election_ticks))
            {
                self.transfer = None;
            }
            if self.elapsed >= self.cfg.election_ticks {
                self.elapsed = 0;
                if self.cfg.check_quorum {
                    let active = self
                        .conf
                        .voters
                        .iter()
                        .filter(|v| {
                            **v == self.cfg.id || self.prs.get(v).is_some_and(|p| p.recent_active)
                        })
                        .count();
                    if active < self.quorum() {
                        let t = self.term;
                        self.become_follower(t, None, out);
                        return;
                    }
                }
                for pr in self.prs.values_mut() {
                    pr.recent_active = false;
                }
            }
            if self.hb_elapsed >= self.cfg.heartbeat_ticks {
                self.hb_elapsed = 0;
                self.bcast_heartbeat(out);
            }
        } else {
            self.elapsed += 1;
            self.since_leader = self.since_leader.saturating_add(1);
            if self.promotable() && self.elapsed >= self.timeout {
                let pre = self.cfg.pre_vote;
                self.campaign(pre, false, out);
            }
        }
    }

    fn step_inner(&mut self, from: NodeId, msg: Message, out: &mut Out) {
        let mterm = msg.term();
        if mterm > self.term {
            match &msg {
                Message::PreVote { .. }
                | Message::Vote {
                    transfer: false, ..
                } if self.in_lease() => return,
                Message::PreVote { .. } | Message::PreVoteResp { granted: true, .. } => {}
                Message::Append { .. }
                | Message::Heartbeat { .. }
                | Message::InstallSnapshot { .. } => self.become_follower(mterm, Some(from), out),
                _ => self.become_follower(mterm, None, out),
            }
        } else if mterm < self.term {
            // What is committed does not depend on terms: a stale vote
            // message still tells what its sender knows (see `learn_commit`).
            if let Some((commit, commit_term)) = msg.commit_mark() {
                self.learn_commit_in_campaign(commit, commit_term, out);
            }
            match msg {
                Message::Append { .. } | Message::Heartbeat { .. }
                    if self.cfg.check_quorum || self.cfg.pre_vote =>
                {
                    // Tell a stale leader about our term so it steps down.
                    out.send(
                        from,
                        Message::AppendResp {
                            term: self.term,
                            success: false,
                            index: 0,
                            hint: None,
                        },
                    );
                }
                Message::PreVote { .. } => {
                    let (commit, commit_term) = self.commit_mark();
                    out.send(
                        from,
                        Message::PreVoteResp {
                            term: self.term,
                            granted: false,
                            commit,
                            commit_term,
                        },
                    );
                }
                _ => {}
            }
            return;
        }
        match msg {
            Message::PreVote {
                term,
                last_index,
                last_term,
                commit,
                commit_term,
            } => {
                self.learn_commit_in_campaign(commit, commit_term, out);
                let granted = term > self.term
                    && (self.log_ok(last_index, last_term) || self.bugs.vote_without_log_check);
                let term = if granted { term } else { self.term };
                let (commit, commit_term) = self.commit_mark();
                out.send(
                    from,
                    Message::PreVoteResp {
                        term,
                        granted,
                        commit,
                        commit_term,
                    },
                );
            }
            Message::Vote {
                last_index,
                last_term,
                commit,
                commit_term,
                ..
            } => {
                self.learn_commit_in_campaign(commit, commit_term, out);
                let can_vote =
                    self.vote == Some(from) || (self.vote.is_none() && self.leader.is_none());
                let granted = can_vote
                    && (self.log_ok(last_index, last_term) || self.bugs.vote_without_log_check);
                if granted {
                    self.vote = Some(from);
                    self.elapsed = 0;
                    if self.bugs.reply_before_persist {
                        self.persisted = self.hard_state();
                    } else {
                        self.persist_hard(out);
                    }
                }
                let (commit, commit_term) = self.commit_mark();
                out.send(
                    from,
                    Message::VoteResp {
                        term: self.term,
                        granted,
                        commit,
                        commit_term,
                    },
                );
            }
            Message::PreVoteResp {
                term,
                granted,
                commit,
                commit_term,
            } => {
                if self.role == Role::PreCandidate
                    && (term == self.term + 1 || !granted)
                    && self.learn_commit_in_campaign(commit, commit_term, out)
                {
                    self.votes.insert(from, granted);
                    self.poll(out);
                }
            }
            Message::VoteResp {
                granted,
                commit,
                commit_term,
                ..
            } => {
                if self.role == Role::Candidate
                    && self.learn_commit_in_campaign(commit, commit_term, out)
                {
                    self.votes.insert(from, granted);
                    self.poll(out);
                }
            }
            Message::Append {
                prev_index,
                prev_term,
                entries,
                commit,
                held,
                ..
            } => {
                if !self.heard_from_leader(from, out) {
                    return;
                }
                self.on_append(from, prev_index, prev_term, entries, commit, out);
                // Entries at or below our commit index are the leader's, so
                // what it says of them holds for ours.
                self.leader_held = self.leader_held.max(held.min(self.commit));
            }
            Message::Heartbeat {
                commit, ctx, held, ..
            } => {
                if !self.heard_from_leader(from, out) {
                    return;
                }
                let c = commit.min(self.log.last_index());
                if c > self.commit {
                    self.commit = c;
                    self.sync_conf();
                }
                self.leader_held = self.leader_held.max(held.min(self.commit));
                out.send(
                    from,
                    Message::HeartbeatResp {
                        term: self.term,
                        ctx,
                    },
                );
            }
            Message::InstallSnapshot { snapshot, .. } => {
                if !self.heard_from_leader(from, out) {
                    return;
                }
                self.on_install_snapshot(from, *snapshot, out);
            }
            Message::AppendResp {
                success,
                index,
                hint,
                ..
            } => {
                if self.role == Role::Leader {
                    self.on_append_resp(from, success, index, hint, out);
                }
            }
            Message::HeartbeatResp { ctx, .. } => {
                if self.role == Role::Leader {
                    self.on_heartbeat_resp(from, ctx, out);
                }
            }
            Message::TimeoutNow { .. } => {
                if self.role == Role::Follower && self.leader == Some(from) {
                    self.campaign(false, true, out);
                }
            }
            Message::ReadIndex { id, .. } => {
                if self.role == Role::Leader && self.conf.contains(from) {
                    self.leader_read(id, Some(from), out);
                } else {
                    let term = self.term;
                    let index = None;
                    out.send(from, Message::ReadIndexResp { term, id, index });
                }
            }
            Message::ReadIndexResp { id, index, .. } => {
                if self
                    .asked_reads
                    .get(&id)
                    .is_some_and(|(_, l, _)| *l == from)
                {
                    let (callers, _, _) = self.asked_reads.remove(&id).expect("checked above");
                    match index {
                        Some(i) => self.ready_reads.extend(callers.into_iter().map(|c| (c, i))),
                        None => self.failed_reads.extend(callers),
                    }
                    self.ask_queued_reads(out);
                }
            }
        }
    }

    /// A message from the leader of our term: follow it. Returns false if we
    /// are ourselves leader of this term (impossible unless a bug let two
    /// leaders be elected in one term).
    fn heard_from_leader(&mut self, from: NodeId, out: &mut Out) -> bool {
        if self.role == Role::Leader {
            return false;
        }
        if self.role != Role::Follower {
            let t = self.term;
            self.become_follower(t, Some(from), out);
        }
        self.leader = Some(from);
        self.elapsed = 0;
        self.since_leader = 0;
        self.quick_until = 0;
        true
    }

    // ---- invariants ----------------------------------------------------------

    fn snapshot_for_checks(&self) -> Before {
        Before {
            term: self.term,
            vote: self.vote,
            leader: self.role == Role::Leader,
            last: (self.log.last_index(), self.log.last_term()),
            commit: self.commit,
        }
    }

    fn finish(&mut self, before: Before, out: &mut Out) {
        self.persist_hard(out);
        self.release_payloads();
        self.check_invariants();
        if before.term == self.term {
            if let Some(v) = before.vote {
                assert_eq!(
                    self.vote,
                    Some(v),
                    "node {} voted twice in term {}",
                    self.cfg.id,
                    self.term
                );
            }
            if before.leader && self.role == Role::Leader {
                let (i, t) = before.last;
                assert!(
                    i <= self.log.snap.index || self.log.term(i) == Some(t),
                    "leader {} overwrote its own entry {i}",
                    self.cfg.id
                );
            }
        }
        assert!(before.term <= self.term, "term went backwards");
        assert!(before.commit <= self.commit, "commit index went backwards");
    }

    /// Drops the commands the log no longer needs ([`RaftNode::release_bound`]).
    fn release_payloads(&mut self) {
        let upto = if self.bugs.send_released {
            self.applied
        } else {
            self.release_bound()
        };
        self.log.release(upto);
    }

    /// Invariants that hold between any two calls.
    pub fn check_invariants(&self) {
        let id = self.cfg.id;
        debug_assert_eq!(
            self.conf,
            self.log.conf_at(self.commit),
            "node {id}: the configuration in force is not the latest committed one"
        );
        assert!(
            self.commit <= self.log.last_index(),
            "node {id}: commit beyond the log"
        );
        assert!(
            self.applied <= self.commit,
            "node {id}: applied beyond commit"
        );
        assert!(
            self.log.snap.index <= self.applied,
            "node {id}: snapshot beyond applied"
        );
        assert!(
            self.log.released() <= self.applied,
            "node {id}: a command released before it was applied"
        );
        assert!(
            self.log.last_term() <= self.term,
            "node {id}: log term beyond the current term"
        );
        if let Some(e) = self.log.entries().last() {
            assert_eq!(e.index, self.log.last_index(), "node {id}: log indices");
        }
        match self.role {
            Role::Leader => {
                assert_eq!(
                    self.leader,
                    Some(id),
                    "node {id}: leader does not know it leads"
                );
                assert_eq!(
                    self.vote,
                    Some(id),
                    "node {id}: leader did not vote for itself"
                );
                assert!(self.pending_conf <= self.log.last_index());
            }
            Role::Candidate => assert_eq!(
                self.vote,
                Some(id),
                "node {id}: candidate did not vote for itself"
            ),
            _ => {}
        }
    }
}

fn pr_needs_empty(pr: Option<&Progress>) -> bool {
    // A probe with nothing new still carries the commit index and resumes the
    // conversation.
    pr.is_some_and(|p| p.state == ProgressState::Probe)
}

#[derive(Clone, Copy)]
struct Before {
    term: u64,
    vote: Option<NodeId>,
    leader: bool,
    last: (u64, u64),
    commit: u64,
}
