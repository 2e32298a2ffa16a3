//! One member: a thread that drives a [`Replica`] with a real clock, disk and
//! network, honouring the sans-IO contract: the writes of everything handled
//! in one round are made durable with one sync (group commit) before any of
//! the round's messages leave or any answer is given — except the messages the
//! replica allows out before the sync (a leader's appends and heartbeats, see
//! `Envelope::early`), which go first so that followers write while
//! the leader does.
//!
//! When more input is queued, the sync runs on a thread of its own (pipelined
//! group commit): while it is in flight the member keeps stepping, and the
//! output of those rounds waits,
//! writes included, until it is done; then that output is written and synced
//! as one group, its early messages leaving first. So one sync is in flight
//! at a time, every output's messages and answers still follow its writes'
//! sync, and early messages still leave only once every earlier output is
//! durable: the simulator's disk model runs exactly this order
//! (`synod_sim::sim`, "one sync in flight").

use crate::compactor::{AutoCompaction, Compactor};
use crate::disk::SyncJob;
use crate::engines::{EngineDisk, Served};
use crate::inbox::{InboxRx, InboxTx, Woke};
use crate::metrics::Metrics;
use crate::peer::{
    self, ActiveSince, Expect, Hello, Incoming, JoinInfo, JoinMember, OnHello, OnJoin, PeerInput,
    PeerMsg, PeerSender, PeerStream, StreamState,
};
use crate::replies::{Deliver, Replies, Reply};
use std::collections::{BTreeMap, BTreeSet};
use std::net::{SocketAddr, TcpListener, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::{mpsc, Arc, Mutex, RwLock};
use std::time::{Duration, Instant};
use synod_etcd::{Applied, MemberInfo};
use synod_kv::auth::AuthState;
use synod_kv::replica::{
    Answer, Replica, ReplicaBugs, ReplicaConfig, ReplicaError, ReplicaEvent, ReplicaInput,
    ReplicaView, Request, StoreImage,
};
use synod_kv::{Command, MemberChange, MemberRecord};
use synod_protocols::raft::{ConfState, Payload};
use synod_protocols::{Envelope, Node, NodeId, Output};
use synod_raft_log::StreamedSnapshot;
use tokio::sync::{broadcast, oneshot};

/// How a member is set up.
#[derive(Clone, Debug)]
pub struct MemberConfig {
    /// Raft id: the member's etcd member id, as in etcd. Also the owner
    /// its data directory is tagged with.
    pub id: NodeId,
    pub cluster_id: u64,
    pub name: String,
    /// Where this member serves clients, published to the cluster.
    pub client_urls: Vec<String>,
    pub data_dir: PathBuf,
    /// The initial cluster as the flags describe it (id, name, peer URLs):
    /// where to reach a member the replicated records do not place yet.
    pub initial: Vec<MemberInfo>,
    /// The voters a new cluster starts with; empty for a member that joins
    /// a running cluster (it waits until the leader reaches it).
    pub voters: Vec<NodeId>,
    /// Where this member accepts peers (`--listen-peer-urls`).
    pub listen_peer: SocketAddr,
    /// TLS with the peers (`--peer-*`), or plain TCP.
    pub peer_tls: Option<Arc<crate::peer::PeerTls>>,
    /// One tick (`--heartbeat-interval`).
    pub tick: Duration,
    /// Ticks without a leader before a follower campaigns
    /// (`--election-timeout` / `--heartbeat-interval`).
    pub election_ticks: u32,
    /// Applied entries between snapshots (`--snapshot-count`).
    pub snapshot_every: u64,
    /// `--snapshot-log-percent` (`RaftConfig::snapshot_log_percent`).
    pub snapshot_log_percent: u64,
    pub max_txn_ops: usize,
    /// The largest peer message taken (see `Tuning::max_peer_frame`).
    pub max_peer_frame: usize,
    /// `--quota-backend-bytes` (0: no quota).
    pub quota_bytes: u64,
    /// `--pre-vote` (Raft only).
    pub pre_vote: bool,
    /// `--auto-compaction-mode` and `--auto-compaction-retention`.
    pub auto_compaction: Option<AutoCompaction>,
    /// Deliberate bugs (`--unsafe-bug`; only with the `broken` feature).
    pub bugs: ReplicaBugs,
}

/// What the member publishes of the cluster's membership after every
/// change (MemberList, join queries): one entry per voter and learner.
pub type Directory = Arc<RwLock<Vec<MemberInfo>>>;

/// The auth store as the member last applied it, shared with the API
/// services, which check every request against it. Replaced (a new `Arc`)
/// whenever it changes, before any answer that depends on the change.
pub type AuthView = Arc<RwLock<Arc<AuthState>>>;

/// Messages a member's inbox holds. A TLS peer's reader blocks when it is
/// full (TCP then slows the sender down; plain peers' sockets are read by
/// the member's thread itself, as it steps); clients are told to back off
/// ("etcdserver: too many requests"). The channel writes every slot (about
/// 128 bytes) when it is made: 64k slots were 8 MB of every member's memory,
/// idle or not. 16k is still three times etcd's own bound (5,000 entries
/// committed but not applied) and 60 times the most clients `synod bench`
/// keeps in flight.
pub const INBOX_CAPACITY: usize = 16 * 1024;
/// Requests parked while no leader is known; more are refused at once with
/// "no leader" instead of piling up during a long election.
const MAX_PARKED: usize = 16 * 1024;

/// A client's request passed to the leader, until answered.
///
/// A write travels as [`Command::Tagged`] with this member's id and the
/// request's, and the leader proposes it only in the term it was sent in
/// ([`PeerMsg::Forward`]). So its entry, if any, is of that term, and log
/// terms never decrease along the log: once this member applies an entry of
/// a later term without having met the tag, the write was not applied and
/// never will be, and it is sent again to the new leader. Met, the member's
/// own apply answers it: on Raft the leader sends no reply for a write it
/// applied without error (only refusals, lost entries and errors), so such
/// a write costs no reply message, and the client that hears of it here can
/// read it here. Either way the client hears the write's true fate instead of
/// "leader changed" when the leader dies or is cut off with the write in
/// flight. Only a snapshot that jumps over the entries (they cannot
/// be checked one by one) leaves the outcome unknown.
struct Forwarded {
    /// The leader it went to.
    to: NodeId,
    client: Reply,
    /// For a write: the term it was sent in, and the request to send again.
    write: Option<(u64, Request)>,
    /// When it was first sent (for [`crate::metrics::Stages::forwarded`]).
    sent: Instant,
}

/// The first request id of this life of the member. Forwarded writes carry
/// their id in the log, where a previous life's entries may still be
/// applied after a restart: ids start from the wall clock so that no id of
/// this life repeats one of an earlier life (they would need more than a
/// request per nanosecond).
fn first_request_id() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64)
}

/// The feed of applied changes a member publishes for watchers.
pub type Feed = broadcast::Sender<Arc<Applied>>;

/// Work run on a member's thread against its state.
/// It returns how to hand its value to whoever waits for it: that last step
/// runs on the API runtime with the round's answers ([`Replies`]).
pub type LocalJob = Box<dyn FnOnce(&dyn ReplicaView, &Feed) -> Deliver + Send>;

/// What a member's thread is asked to do.
pub enum Inbox {
    Peer(Incoming),
    /// A peer's connection, for this thread to read ([`PeerStream`]).
    PeerStream(PeerStream),
    Client {
        req: Request,
        reply: Reply,
        /// When the API thread handed it over.
        at: Instant,
    },
    /// Run a closure on the member's state, on its thread (local reads and
    /// status, and subscribing to the feed at a known revision).
    Local(LocalJob),
    /// A snapshot image, encoded on its own thread, for the replica to
    /// compact its log with.
    SnapshotEncoded {
        index: u64,
        data: Payload,
        /// The snapshot's file, if it was written as the data was encoded
        /// (then `data` is mapped from it).
        streamed: Option<StreamedSnapshot>,
    },
    /// Hand leadership to `target` (or, if `None`, to the most up-to-date
    /// voter); answered once this member no longer leads, or after an
    /// election timeout.
    Handoff {
        target: Option<NodeId>,
        reply: oneshot::Sender<Handoff>,
    },
    /// The sync thread finished the sync in flight, `took` long.
    Synced {
        job: SyncJob,
        result: std::io::Result<()>,
        took: Duration,
    },
    Stop,
}

/// How a leadership handoff ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Handoff {
    /// This member does not lead (any more, or never did).
    NotLeader,
    /// Leadership left this member.
    Moved,
    /// The target is this member (nothing to do), or there is no other voter.
    Stayed,
    /// The target is not a voter of this cluster.
    BadTarget,
    /// The target did not take over within an election timeout.
    TimedOut,
}

/// A running member.
pub struct Member {
    pub id: NodeId,
    pub inbox: InboxTx<Inbox>,
    /// The membership as this member last applied it.
    pub directory: Directory,
    /// The auth store as this member last applied it.
    pub auth: AuthView,
    /// Since when each peer has been reachable (see [`ActiveSince`]).
    pub active: ActiveSince,
    /// Set when the member stops by itself, with the reason (removed from
    /// the cluster, storage failed).
    pub ended: tokio::sync::watch::Receiver<Option<String>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Member {
    /// Recovers the member from its data directory and starts it on engine
    /// `E`. `on_hello` learns each peer's name and client URLs as it
    /// connects.
    pub fn start<E: Served>(
        cfg: MemberConfig,
        on_hello: OnHello,
        metrics: Arc<Metrics>,
    ) -> Result<Member, String> {
        let name = cfg.name.clone();
        // The port first: a member that cannot serve leaves its data untouched.
        let addr = cfg.listen_peer;
        let listener = TcpListener::bind(addr)
            .map_err(|e| format!("member {name}: cannot listen for peers on {addr}: {e}"))?;
        let recovery = Instant::now();
        let (mut disk, recovered, report) = E::Log::open(&cfg.data_dir, cfg.cluster_id, cfg.id)
            .map_err(|e| format!("member {name}: {e}"))?;
        disk.set_meters(crate::disk::DiskMeters::new(
            metrics.fsync.clone(),
            metrics.wal_written.clone(),
        ));
        if let Some(t) = &report.torn_tail {
            tracing::warn!(member = %name, "recovery cut a torn tail: {t:?}");
        }
        let (tx, rx) = crate::inbox::inbox(INBOX_CAPACITY)
            .map_err(|e| format!("member {name}: cannot make its inbox: {e}"))?;
        let expect = Expect {
            cluster_id: cfg.cluster_id,
            member_id: cfg.id,
            max_frame: cfg.max_peer_frame,
        };
        let directory: Directory = Arc::new(RwLock::new(cfg.initial.clone()));
        let cluster_id = cfg.cluster_id;
        let published = directory.clone();
        let on_join: OnJoin = Arc::new(move || JoinInfo {
            cluster_id,
            members: published
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .map(|m| JoinMember {
                    id: m.id,
                    name: m.name.clone(),
                    peer_urls: m.peer_urls.clone(),
                    is_learner: m.is_learner,
                })
                .collect(),
        });
        // Which peers have said hello: the driver waits for a quorum of them
        // before it fast-forwards its first election (see `Driver::run`).
        let heard: Arc<Mutex<BTreeSet<NodeId>>> = Arc::default();
        let heard_in = heard.clone();
        let on_hello: OnHello = Arc::new(move |h: &Hello| {
            heard_in
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(h.from);
            on_hello(h);
        });
        let peer_tx = tx.clone();
        let deliver: peer::Deliver = Arc::new(move |input| {
            let m = match input {
                PeerInput::Msg(m) => Inbox::Peer(m),
                PeerInput::Stream(s) => Inbox::PeerStream(s),
            };
            peer_tx.send(m).is_ok()
        });
        let listening = peer::listen(
            listener,
            expect,
            on_hello,
            on_join,
            deliver,
            cfg.peer_tls.clone(),
            metrics.peers.clone(),
        )
        .map_err(|e| format!("member {name}: {e}"))?;
        let hello = Arc::new(Hello::new(
            cfg.cluster_id,
            cfg.id,
            cfg.id,
            cfg.name.clone(),
            cfg.client_urls.clone(),
        ));
        let mut rcfg = ReplicaConfig::new(cfg.id, cfg.voters.clone());
        rcfg.tick_ms = cfg.tick.as_millis() as u64;
        rcfg.raft.election_ticks = cfg.election_ticks;
        rcfg.raft.pre_vote = cfg.pre_vote;
        rcfg.raft.snapshot_every = cfg.snapshot_every;
        rcfg.raft.snapshot_log_percent = cfg.snapshot_log_percent;
        rcfg.max_txn_ops = cfg.max_txn_ops;
        rcfg.quota_bytes = cfg.quota_bytes;
        // Encoding a store of tens of megabytes took the member's thread away
        // from every request for a tenth of a second (issue 11).
        rcfg.encode_snapshots_elsewhere = true;
        // A seed of its own per life: the core draws the nonce that keeps a
        // read of an earlier life from matching one of this life from it.
        let life = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        #[cfg(feature = "broken")]
        let replica = Replica::<E>::with_bugs(rcfg, &recovered, cfg.id ^ life, cfg.bugs);
        #[cfg(not(feature = "broken"))]
        let replica = {
            if cfg.bugs != ReplicaBugs::default() {
                return Err(format!(
                    "member {name}: deliberate bugs need a build with the `broken` feature"
                ));
            }
            Replica::<E>::new(rcfg, &recovered, cfg.id ^ life)
        };
        let (snapshot_index, entries) = E::Log::summary(&recovered);
        if snapshot_index > 0 || entries > 0 {
            // What a restart costs before the member can serve.
            tracing::info!(
                member = %name,
                engine = E::NAME,
                snapshot_index,
                entries,
                took_ms = recovery.elapsed().as_millis() as u64,
                "recovered"
            );
        }
        // The core now keeps the snapshot in its file, and the recovered
        // image goes: both heap copies of the state are freed here, on the
        // thread that allocated them.
        let mut replica = replica;
        if let Some((index, data)) = disk.take_mapped() {
            replica.share_snapshot_data(index, data);
        }
        drop(recovered);
        let id = cfg.id;
        let loop_tx = tx.clone();
        let (end_tx, ended) = tokio::sync::watch::channel(None);
        let shared = directory.clone();
        let auth: AuthView = Arc::new(RwLock::new(Arc::new(replica.store().auth().clone())));
        let auth_in = auth.clone();
        let active = ActiveSince::default();
        let active_in = active.clone();
        // Started here, on the API runtime, which the member's thread is not.
        let replies = Replies::start();
        let thread = std::thread::Builder::new()
            .name(format!("synod-member-{id:x}"))
            .spawn(move || {
                let compactor = cfg.auto_compaction.map(Compactor::new);
                let mut driver = Driver::new(cfg, replica, disk, hello, loop_tx, heard, metrics);
                driver.directory = shared;
                driver.auth = auth_in;
                driver.active = active_in;
                driver.compactor = compactor;
                driver.replies = replies;
                if let Err(why) = driver.run(rx) {
                    tracing::error!(member = %driver.cfg.name, "stopping: {why}");
                    let _ = end_tx.send(Some(why));
                }
                drop(listening);
            })
            .map_err(|e| format!("member {id:x}: {e}"))?;
        Ok(Member {
            id,
            inbox: tx,
            directory,
            auth,
            active,
            ended,
            thread: Some(thread),
        })
    }

    /// Asks the member to hand its leadership away (if it leads) before a
    /// planned stop, so that the others need not wait out an election
    /// timeout; resolves when it has, or has given up.
    pub fn handoff(&self, target: Option<NodeId>) -> oneshot::Receiver<Handoff> {
        let (reply, rx) = oneshot::channel();
        let _ = self.inbox.send(Inbox::Handoff { target, reply });
        rx
    }

    /// Stops the member's thread (its peers see it as crashed).
    pub fn stop(&mut self) {
        let _ = self.inbox.send(Inbox::Stop);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Most inputs taken into one round (one sync).
const MAX_BATCH: usize = 1024;

/// An output whose writes are being synced: its messages (all but the early
/// ones, sent already) and events.
struct Held<M> {
    msgs: Vec<Envelope<M>>,
    events: Vec<ReplicaEvent>,
}

struct Driver<E: Served> {
    cfg: MemberConfig,
    replica: Replica<E>,
    disk: E::Log,
    /// Opens every connection this member makes to a peer.
    hello: Arc<Hello>,
    /// A writer per member of the configuration (and per removed member
    /// that still has to be told).
    peers: BTreeMap<NodeId, PeerSender>,
    /// Since when each peer's writer has been connected.
    active: ActiveSince,
    directory: Directory,
    auth: AuthView,
    /// The configuration and member records `directory` was made from.
    seen_conf: Option<(ConfState, BTreeMap<u64, MemberRecord>)>,
    /// Whether this member has been in the configuration (a member that
    /// joins is not, until the leader's change reaches it).
    was_member: bool,
    /// When this member, removed from the configuration, stops.
    leaving: Option<Instant>,
    /// Removed members told so, and when (at most once a second each).
    told_removed: BTreeMap<NodeId, Instant>,
    /// Heartbeats sent and not yet answered, by (peer, round): when they
    /// left, for the peer round-trip metric.
    heartbeats: BTreeMap<(NodeId, u64), Instant>,
    /// Compacts the history while this member leads (auto compaction).
    compactor: Option<Compactor>,
    /// The compaction it asked for, until answered.
    compacting: Option<oneshot::Receiver<Result<Answer, ReplicaError>>>,
    /// This member's name and client URLs, being published to the cluster.
    publishing: Option<oneshot::Receiver<Result<Answer, ReplicaError>>>,
    own: InboxTx<Inbox>,
    /// The peers' connections this thread reads.
    streams: Vec<PeerStream>,
    /// What a connection held when last read (kept for its capacity).
    arrived: Vec<PeerMsg>,
    feed: Feed,
    next_id: u64,
    /// Requests of local clients by request id.
    /// With when each was handed to the replica.
    clients: BTreeMap<u64, (Reply, Instant)>,
    /// Linearizable reads in flight here, by request id: one that loses its
    /// leader (its read index never comes) is asked again once a leader is
    /// known instead of failing. A read changes nothing, so a new attempt is
    /// safe; the client's deadline bounds the attempts.
    reads: BTreeMap<u64, Request>,
    /// Requests forwarded by other members: our request id -> (member, their id).
    forwarded_in: BTreeMap<u64, (NodeId, u64)>,
    /// Requests we forwarded to the leader, by their id here.
    forwarded_out: BTreeMap<u64, Forwarded>,
    /// The last entry this member applied (index, term), to settle the
    /// writes it forwarded.
    applied: (u64, u64),
    /// Requests that arrived while no leader was known (during an election):
    /// held until one is, as etcd holds them, rather than refused at once.
    /// The client's own deadline bounds the wait.
    parked: Vec<(Request, Reply)>,
    /// Local jobs wait for the end of the round: the state they read must be
    /// durable first (the leader may apply an entry that only its own unsynced
    /// write makes a quorum of; see [`Driver::may_read`]).
    local_jobs: Vec<LocalJob>,
    /// The round's answers, sent together when it ends ([`Replies`]).
    replies: Replies,
    /// The output of the rounds stepped since the sync in flight started (or
    /// of this round, if none is): it waits, writes and all, for that sync.
    out: Output<E::Write, E::Msg, ReplicaEvent>,
    /// Emptied vectors of earlier outputs, for the next one ([`Driver::take_out`]).
    spare: Output<E::Write, E::Msg, ReplicaEvent>,
    /// What waits for the sync in flight.
    in_flight: Option<Held<E::Msg>>,
    /// The sync thread's answer, taken at the end of the round.
    synced: Option<(SyncJob, std::io::Result<()>, Duration)>,
    /// Where the syncs go (the member's sync thread).
    syncer: Option<mpsc::Sender<SyncJob>>,
    /// Whether the state may be read for others ([`Driver::may_read`]).
    readable: bool,
    /// Whether more input was queued when the round ended.
    backlog: bool,
    /// Peers that have connected to us, until the first election is
    /// fast-forwarded; `None` after that.
    heard: Option<Arc<Mutex<BTreeSet<NodeId>>>>,
    metrics: Arc<Metrics>,
    /// The leader as last seen, to count leader changes.
    seen_leader: Option<NodeId>,
    /// A leadership handoff under way: who waits for it, and until when.
    handoff: Option<(oneshot::Sender<Handoff>, Instant)>,
    /// Peers heard speaking another engine, and when that was last said.
    wrong_engine: BTreeMap<NodeId, Instant>,
}

impl<E: Served> Driver<E> {
    fn new(
        cfg: MemberConfig,
        replica: Replica<E>,
        disk: E::Log,
        hello: Arc<Hello>,
        own: InboxTx<Inbox>,
        heard: Arc<Mutex<BTreeSet<NodeId>>>,
        metrics: Arc<Metrics>,
    ) -> Driver<E> {
        let applied = replica.applied_index();
        Driver {
            directory: Arc::new(RwLock::new(cfg.initial.clone())),
            auth: Arc::new(RwLock::new(Arc::new(replica.store().auth().clone()))),
            cfg,
            replica,
            disk,
            hello,
            peers: BTreeMap::new(),
            active: ActiveSince::default(),
            seen_conf: None,
            was_member: false,
            leaving: None,
            told_removed: BTreeMap::new(),
            heartbeats: BTreeMap::new(),
            compactor: None,
            compacting: None,
            publishing: None,
            own,
            streams: Vec::new(),
            arrived: Vec::new(),
            feed: broadcast::channel(4096).0,
            next_id: first_request_id(),
            clients: BTreeMap::new(),
            reads: BTreeMap::new(),
            forwarded_in: BTreeMap::new(),
            forwarded_out: BTreeMap::new(),
            applied: (applied, 0),
            parked: Vec::new(),
            local_jobs: Vec::new(),
            replies: Replies::start(),
            out: Output::default(),
            spare: Output::default(),
            in_flight: None,
            synced: None,
            syncer: None,
            readable: true,
            backlog: false,
            heard: Some(heard),
            metrics,
            seen_leader: None,
            handoff: None,
            wrong_engine: BTreeMap::new(),
        }
    }

    fn start_handoff(&mut self, now: u64, target: Option<NodeId>, reply: oneshot::Sender<Handoff>) {
        if !self.replica.is_leader() {
            let _ = reply.send(Handoff::NotLeader);
            return;
        }
        let me = self.cfg.id;
        let voters = self.replica.conf().voters.clone();
        let target = match target {
            Some(t) if t == me => {
                let _ = reply.send(Handoff::Stayed);
                return;
            }
            Some(t) if !voters.contains(&t) => {
                let _ = reply.send(Handoff::BadTarget);
                return;
            }
            Some(t) => t,
            None => {
                // No other voter, or an engine that moves leadership by
                // election only.
                let Some(best) = self.replica.engine().successor() else {
                    let _ = reply.send(Handoff::Stayed);
                    return;
                };
                best
            }
        };
        tracing::info!(member = %self.cfg.name, to = %format_args!("{target:x}"), "transferring leadership");
        let input = ReplicaInput::TransferLeader(target);
        self.replica.input(now, input, &mut self.out);
        let deadline = Instant::now() + self.cfg.tick * self.cfg.election_ticks;
        self.handoff = Some((reply, deadline));
    }

    /// Answers a pending handoff once leadership has moved or time is up.
    fn check_handoff(&mut self) {
        let outcome = match &self.handoff {
            Some(_) if !self.replica.is_leader() => Handoff::Moved,
            Some((_, deadline)) if Instant::now() >= *deadline => Handoff::TimedOut,
            _ => return,
        };
        if let Some((reply, _)) = self.handoff.take() {
            let _ = reply.send(outcome);
        }
    }

    /// Mirrors the member's state into its metrics, after every round.
    fn observe(&mut self) {
        let mut old_leader = None;
        let m = &self.metrics;
        let raft = &self.replica;
        let leader = raft.leader();
        if leader != self.seen_leader {
            if let Some(l) = leader {
                m.leader_changes.inc();
                tracing::info!(
                    member = %self.cfg.name,
                    leader = %format_args!("{l:x}"),
                    term = raft.term(),
                    "leader elected"
                );
            } else {
                tracing::info!(member = %self.cfg.name, term = raft.term(), "lost leader");
            }
            old_leader = self.seen_leader;
            self.seen_leader = leader;
        }
        m.has_leader.set(i64::from(leader.is_some()));
        m.is_leader.set(i64::from(self.replica.is_leader()));
        m.committed.set(raft.commit_index() as i64);
        m.applied.set(raft.applied_index() as i64);
        m.pending
            .set((self.clients.len() + self.forwarded_in.len()) as i64);
        if let Some(old) = old_leader {
            self.leader_left(old);
        }
    }

    /// What was forwarded to leader `old`, which no longer leads, may never
    /// be answered (it died, or was cut off): its clients hear "leader
    /// changed" now, as etcd's do, and retry, instead of waiting out their
    /// deadline. Writes wait: this member's own log settles them
    /// ([`Forwarded`]).
    ///
    /// On an engine whose log cannot settle them ([`synod_kv::engine::Engine::terms_ordered`]:
    /// Multi-Paxos), writes hear "leader changed" too: their fate is
    /// unknown, as it is to etcd's clients when their leader fails.
    fn leader_left(&mut self, old: NodeId) {
        let hasty = self.cfg.bugs.retry_unsettled_forwards;
        let unsettled = !self.replica.engine().terms_ordered();
        let lost: Vec<u64> = self
            .forwarded_out
            .iter()
            .filter(|(_, f)| f.to == old && (f.write.is_none() || hasty || unsettled))
            .map(|(id, _)| *id)
            .collect();
        for id in lost {
            let Some(f) = self.forwarded_out.remove(&id) else {
                continue;
            };
            match f.write {
                Some(_) if unsettled => {
                    self.replies
                        .answer(f.client, Err(ReplicaError::LeaderChanged));
                }
                Some((_, req)) => self.retry(req, f.client),
                None => {
                    self.replies
                        .answer(f.client, Err(ReplicaError::LeaderChanged));
                }
            }
        }
    }

    /// A member that starts (or restarts) would otherwise wait a whole
    /// randomized election timeout before its first campaign, which is most
    /// of a restarted cluster's time to its first write. As etcd does, once
    /// it can reach a quorum (enough peers have said hello) and still knows
    /// no leader, it fast-forwards its election clock to one tick short of
    /// the timeout; the randomized part still separates the candidates.
    fn maybe_fast_forward_election(&mut self, now: u64) {
        let Some(heard) = &self.heard else { return };
        if self.replica.is_leader() || self.replica.leader().is_some() {
            self.heard = None;
            return;
        }
        let voters = self.replica.conf().voters.clone();
        let reached = 1 + heard
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|p| voters.contains(p))
            .count();
        if reached > voters.len() / 2 {
            self.heard = None;
            for _ in 1..self.cfg.election_ticks {
                self.replica.tick(now, &mut self.out);
            }
        }
    }

    /// Runs until asked to stop (`Ok`), or until the member must stop by
    /// itself: its storage failed, or it was removed from the cluster.
    fn run(&mut self, mut inbox: InboxRx<Inbox>) -> Result<(), String> {
        let start = Instant::now();
        let mut next_tick = start + self.cfg.tick;
        self.sync_members();
        // An input taken to see whether more work is queued (it opens the
        // next round).
        let mut carry = None;
        loop {
            let wait = next_tick.saturating_duration_since(Instant::now());
            let mut batch = Vec::new();
            match carry.take() {
                Some(m) => batch.push(m),
                None => match inbox.wait(self.streams.iter().map(PeerStream::fd), wait) {
                    Ok(Woke::Message(m)) => batch.push(m),
                    Ok(Woke::Other) => {}
                    Err(_) => return Ok(()),
                },
            }
            while batch.len() < MAX_BATCH {
                match inbox.try_recv() {
                    Ok(m) => batch.push(m),
                    Err(_) => break,
                }
            }
            let now = start.elapsed().as_micros() as u64;
            let stepping = Instant::now();
            // Watchers subscribe on this thread between rounds (the local
            // jobs below), so this holds for the whole round: with nobody
            // watching, applied writes copy no keys and values into events.
            self.replica.set_events(self.feed.receiver_count() > 0);
            if !batch.is_empty() {
                self.metrics.round_inputs.observe(batch.len() as f64);
            }
            for m in batch {
                match m {
                    Inbox::Stop => return Ok(()),
                    Inbox::Peer((from, PeerMsg::Removed)) => {
                        return Err(format!(
                            "member {from:x} says this member was removed from the cluster"
                        ))
                    }
                    m => self.handle(now, m),
                }
            }
            self.read_peers(now)?;
            if !self.parked.is_empty()
                && (self.replica.is_leader() || self.replica.leader().is_some())
            {
                for (req, reply) in std::mem::take(&mut self.parked) {
                    self.client(now, req, reply);
                }
            }
            if Instant::now() >= next_tick {
                self.maybe_fast_forward_election(now);
                self.replica.tick(now, &mut self.out);
                // Ticks are at least one tick apart in wall time, and missed
                // ones are dropped, never caught up in a burst (etcd's ticker
                // drops them too): a burst would run lease clocks faster than
                // wall time and end a lease before its TTL.
                next_tick = (next_tick + self.cfg.tick).max(Instant::now() + self.cfg.tick);
                // Clients that gave up on a forwarded request no longer wait.
                self.forwarded_out.retain(|_, f| !f.client.is_closed());
                self.publish(now);
                self.auto_compact(now);
            }
            self.metrics
                .round_step
                .observe(stepping.elapsed().as_secs_f64());
            self.sync_members();
            carry = inbox.try_recv().ok();
            // Peers' messages wait in their sockets, not in the inbox.
            self.backlog = carry.is_some()
                || crate::inbox::any_readable(self.streams.iter().map(PeerStream::fd));
            self.end_round()?;
            if self.was_member && !self.replica.conf().contains(self.cfg.id) {
                // As etcd, stop a little later: the answer to the removal
                // (this member may have served it) and the record of it
                // still have to get out.
                let at = *self
                    .leaving
                    .get_or_insert_with(|| Instant::now() + self.cfg.tick * 10);
                if Instant::now() >= at {
                    return Err("this member was removed from the cluster".into());
                }
            }
            self.observe();
            self.check_handoff();
            // Before anything waits: what the round sent leaves now.
            self.flush_peers();
            if self.may_read() {
                for job in std::mem::take(&mut self.local_jobs) {
                    let deliver = job(&self.replica, &self.feed);
                    self.replies.deliver(deliver);
                }
            }
            self.replies.flush();
        }
    }

    fn handle(&mut self, now: u64, m: Inbox) {
        match m {
            Inbox::Peer((from, msg @ (PeerMsg::Raft(_) | PeerMsg::Paxos(_)))) => {
                if self.is_removed(from) {
                    self.tell_removed(from);
                    return;
                }
                let msg = match E::unwrap(msg) {
                    Ok(msg) => msg,
                    Err(_) => return self.wrong_engine(from),
                };
                self.log_snapshot("received snapshot from", from, &msg);
                if let Some(ctx) = E::heartbeat_answer(&msg) {
                    if let Some(sent) = self.heartbeats.remove(&(from, ctx)) {
                        let to = format!("{from:x}");
                        self.metrics
                            .peer_rtt
                            .with_label_values(&[to.as_str()])
                            .observe(sent.elapsed().as_secs_f64());
                    }
                }
                self.replica.step(now, from, msg, &mut self.out);
            }
            Inbox::Peer((from, PeerMsg::Forward { id, req, term })) => {
                let tagged = matches!(req, Request::Write(Command::Tagged { .. }));
                if tagged && (!self.replica.is_leader() || self.replica.term() != term) {
                    // Proposed now, it would be of another term than the
                    // sender counts on to settle it: refuse, nothing was
                    // proposed.
                    let hint = self.replica.leader();
                    let result = Err(ReplicaError::NotLeader { hint });
                    if let Some(p) = self.sender(from) {
                        p.send(PeerMsg::Reply { id, result });
                    }
                    return;
                }
                let local = self.next_id;
                self.next_id += 1;
                self.forwarded_in.insert(local, (from, id));
                let input = ReplicaInput::Client { id: local, req };
                self.replica.input(now, input, &mut self.out);
            }
            Inbox::Peer((_, PeerMsg::Reply { id, result })) => self.forward_answered(id, result),
            Inbox::Client { req, reply, at } => {
                self.metrics
                    .stages
                    .queued
                    .observe(at.elapsed().as_secs_f64());
                self.client(now, req, reply)
            }
            Inbox::Local(f) => self.local_jobs.push(f),
            Inbox::PeerStream(s) => self.streams.push(s),
            Inbox::SnapshotEncoded {
                index,
                data,
                streamed,
            } => {
                if let Some(s) = streamed {
                    self.disk.offer_streamed(s);
                }
                let input = ReplicaInput::SnapshotEncoded { index, data };
                self.replica.input(now, input, &mut self.out);
            }
            Inbox::Handoff { target, reply } => self.start_handoff(now, target, reply),
            Inbox::Synced { job, result, took } => {
                assert!(
                    self.in_flight.is_some() && self.synced.is_none(),
                    "one sync in flight at a time, answered once"
                );
                self.synced = Some((job, result, took));
            }
            Inbox::Peer((from, PeerMsg::Closed)) => {
                let input = ReplicaInput::PeerGone(from);
                self.replica.input(now, input, &mut self.out);
            }
            Inbox::Stop | Inbox::Peer((_, PeerMsg::Removed)) => {}
        }
    }

    /// Reads every peer connection this thread holds and steps what they
    /// brought. A connection that ended goes, and its end is stepped as the
    /// peer's [`PeerMsg::Closed`] (a dead process closes all of its
    /// connections). An error if a peer says this member was removed.
    fn read_peers(&mut self, now: u64) -> Result<(), String> {
        let mut i = 0;
        while i < self.streams.len() {
            let mut arrived = std::mem::take(&mut self.arrived);
            let state = self.streams[i].read(&mut |m| arrived.push(m));
            let from = self.streams[i].from;
            for msg in arrived.drain(..) {
                if matches!(msg, PeerMsg::Removed) {
                    return Err(format!(
                        "member {from:x} says this member was removed from the cluster"
                    ));
                }
                self.handle(now, Inbox::Peer((from, msg)));
            }
            self.arrived = arrived;
            match state {
                StreamState::Open => i += 1,
                StreamState::Closed => {
                    self.streams.swap_remove(i);
                    self.handle(now, Inbox::Peer((from, PeerMsg::Closed)));
                }
                // Said why already, and as a reader thread did, without
                // telling the replica the peer is gone.
                StreamState::Refused => {
                    self.streams.swap_remove(i);
                }
            }
        }
        Ok(())
    }

    /// The leader answered a request this member forwarded.
    fn forward_answered(&mut self, id: u64, result: Result<Answer, ReplicaError>) {
        let Some(f) = self.forwarded_out.remove(&id) else {
            return; // settled already by this member's own log
        };
        match (f.write, result) {
            // The leader stepped down before the write was applied: this
            // member's own log settles it.
            (Some(w), Err(ReplicaError::LeaderChanged))
                if self.replica.engine().terms_ordered() =>
            {
                let write = Some(w);
                self.forwarded_out.insert(id, Forwarded { write, ..f });
            }
            // Nothing was proposed: ask the leader there is now.
            (Some((_, req)), Err(ReplicaError::NotLeader { .. })) => self.retry(req, f.client),
            (_, result) => {
                let waited = f.sent.elapsed().as_secs_f64();
                self.metrics.stages.forwarded.observe(waited);
                self.replies.answer(f.client, result);
            }
        }
    }

    /// Sends a request again once a leader is known (it was not applied).
    fn retry(&mut self, req: Request, client: Reply) {
        if self.parked.len() < MAX_PARKED {
            self.parked.push((req, client));
        } else {
            self.replies
                .answer(client, Err(ReplicaError::NotLeader { hint: None }));
        }
    }

    /// Settles forwarded writes against entry `index` of `term`, applied
    /// here (see [`Forwarded`]).
    fn settle_forwarded(&mut self, index: u64, term: u64) {
        let (last_index, last_term) = self.applied;
        self.applied = (index, term);
        let jumped = index != last_index + 1;
        if (!jumped && term <= last_term)
            || self.forwarded_out.is_empty()
            || !self.replica.engine().terms_ordered()
        {
            return;
        }
        let settled: Vec<u64> = self
            .forwarded_out
            .iter()
            .filter(|(_, f)| f.write.as_ref().is_some_and(|(t, _)| jumped || *t < term))
            .map(|(id, _)| *id)
            .collect();
        for id in settled {
            let Some(f) = self.forwarded_out.remove(&id) else {
                continue;
            };
            let Some((_, req)) = f.write else { continue };
            if jumped {
                // A snapshot installed here skipped the entries: the tag
                // may be among them.
                self.replies
                    .answer(f.client, Err(ReplicaError::LeaderChanged));
            } else {
                self.retry(req, f.client);
            }
        }
    }

    /// Remembers when a heartbeat left, to time its answer (rounds never
    /// answered, a peer down, are forgotten after a few seconds), and logs
    /// a snapshot sent.
    fn note_heartbeat(&mut self, to: NodeId, msg: &E::Msg) {
        self.log_snapshot("sending snapshot to", to, msg);
        if let Some(ctx) = E::heartbeat(msg) {
            let now = Instant::now();
            if self.heartbeats.len() >= 1024 {
                self.heartbeats
                    .retain(|_, at| now.duration_since(*at) < Duration::from_secs(5));
                if self.heartbeats.len() >= 1024 {
                    self.heartbeats.clear();
                }
            }
            self.heartbeats.insert((to, ctx), now);
        }
    }

    /// Logs a snapshot that travels between members (`what` the peer).
    fn log_snapshot(&self, what: &str, peer: NodeId, msg: &E::Msg) {
        if let Some((index, bytes)) = E::snapshot(msg) {
            tracing::info!(member = %self.cfg.name, index, bytes, "{what} {peer:x}");
        }
    }

    /// A peer sent a message of the other engine: a cluster started with
    /// two `--engine`s, which cannot work. Said at most once a second per
    /// peer; the message is dropped.
    fn wrong_engine(&mut self, from: NodeId) {
        let now = Instant::now();
        let last = self.wrong_engine.get(&from);
        if last.is_none_or(|t| now.duration_since(*t) >= Duration::from_secs(1)) {
            self.wrong_engine.insert(from, now);
            tracing::error!(
                member = %self.cfg.name,
                peer = %format_args!("{from:x}"),
                "the peer runs another consensus engine than this member's {}; every member of a cluster must run the same --engine",
                E::NAME
            );
        }
    }

    /// Whether the cluster recorded member `id` as removed for good.
    fn is_removed(&self, id: NodeId) -> bool {
        self.replica
            .store()
            .members()
            .get(&id)
            .is_some_and(|m| m.removed)
    }

    /// Tells a removed member so, at most once a second: it still sends
    /// (it may never have applied its removal) and must stop.
    fn tell_removed(&mut self, id: NodeId) {
        let now = Instant::now();
        if self
            .told_removed
            .get(&id)
            .is_some_and(|t| now.duration_since(*t) < Duration::from_secs(1))
        {
            return;
        }
        self.told_removed.insert(id, now);
        if !self.peers.contains_key(&id) {
            let Some(addr) = self.peer_addr(id) else {
                return;
            };
            self.peers.insert(id, self.start_sender(id, addr));
        }
        if let Some(p) = self.peers.get(&id) {
            p.send(PeerMsg::Removed);
        }
    }

    /// Sends what this round framed for each peer (in one write each).
    fn flush_peers(&self) {
        for p in self.peers.values() {
            p.flush();
        }
    }

    /// A writer to member `id` at `addr`, over TLS if the member's peers
    /// speak it.
    fn start_sender(&self, id: NodeId, addr: SocketAddr) -> PeerSender {
        PeerSender::start(
            self.hello.clone(),
            id,
            addr,
            self.active.clone(),
            self.cfg.peer_tls.clone(),
            &self.metrics.peers,
        )
    }

    /// The writer to member `id`, started on first use: a member that joins
    /// has no configuration yet and answers whoever reaches it (its leader).
    fn sender(&mut self, id: NodeId) -> Option<PeerSender> {
        if !self.peers.contains_key(&id) && !self.is_removed(id) {
            let addr = self.peer_addr(id)?;
            self.peers.insert(id, self.start_sender(id, addr));
        }
        self.peers.get(&id).cloned()
    }

    /// Where member `id` is reached: what the cluster recorded, else what
    /// the initial cluster said.
    fn peer_addr(&self, id: NodeId) -> Option<SocketAddr> {
        let recorded = self.replica.store().members().get(&id);
        let urls = match recorded {
            Some(r) if !r.peer_urls.is_empty() => &r.peer_urls,
            _ => &self.cfg.initial.iter().find(|m| m.id == id)?.peer_urls,
        };
        let url = urls.first()?;
        let host_port = url.split_once("://").map_or(url.as_str(), |(_, rest)| rest);
        let host_port = host_port.trim_end_matches('/');
        match host_port.to_socket_addrs().map(|mut a| a.next()) {
            Ok(Some(a)) => Some(a),
            _ => {
                tracing::warn!(member = %self.cfg.name, peer = %format_args!("{id:x}"), "cannot resolve peer URL {url}");
                None
            }
        }
    }

    /// After a membership change: a writer for every new member, none for
    /// the ones that left (a removed one is told so first), and the
    /// directory that MemberList and join queries read.
    fn sync_members(&mut self) {
        let conf = self.replica.conf();
        let records = self.replica.store().members();
        if matches!(&self.seen_conf, Some((c, r)) if *c == *conf && r == records) {
            return;
        }
        let (conf, records) = (conf.into_owned(), records.clone());
        if self.seen_conf.as_ref().is_some_and(|(c, _)| *c != conf) {
            let ids = |v: &[NodeId]| v.iter().map(|id| format!("{id:x}")).collect::<Vec<_>>();
            tracing::info!(
                member = %self.cfg.name,
                voters = ?ids(&conf.voters),
                learners = ?ids(&conf.learners),
                "membership changed"
            );
        }
        let me = self.cfg.id;
        self.was_member |= conf.contains(me);
        for id in conf.members().filter(|id| *id != me) {
            if !self.peers.contains_key(&id) {
                if let Some(addr) = self.peer_addr(id) {
                    self.peers.insert(id, self.start_sender(id, addr));
                }
            }
        }
        let gone: Vec<NodeId> = self
            .peers
            .keys()
            .copied()
            .filter(|id| !conf.contains(*id))
            .collect();
        for id in gone {
            if self.is_removed(id) {
                self.tell_removed(id);
            }
            if records.get(&id).is_none_or(|r| r.removed) {
                // Keep the writer of a member whose removal is not recorded
                // yet: it is told once it is.
                self.peers.remove(&id);
            }
        }
        let mut infos: Vec<MemberInfo> = conf
            .members()
            .map(|id| {
                let initial = self.cfg.initial.iter().find(|m| m.id == id);
                let r = records.get(&id);
                let pick = |recorded: Option<&Vec<String>>, initial: Option<&Vec<String>>| {
                    recorded
                        .filter(|v| !v.is_empty())
                        .or(initial)
                        .cloned()
                        .unwrap_or_default()
                };
                MemberInfo {
                    id,
                    name: r
                        .map(|r| r.name.clone())
                        .filter(|n| !n.is_empty())
                        .or_else(|| initial.map(|m| m.name.clone()))
                        .unwrap_or_default(),
                    peer_urls: pick(r.map(|r| &r.peer_urls), initial.map(|m| &m.peer_urls)),
                    client_urls: pick(r.map(|r| &r.client_urls), initial.map(|m| &m.client_urls)),
                    is_learner: conf.is_learner(id),
                }
            })
            .collect();
        // In id order, as etcd lists them.
        infos.sort_by_key(|m| m.id);
        *self.directory.write().unwrap_or_else(|p| p.into_inner()) = infos;
        self.seen_conf = Some((conf, records));
    }

    /// Publishes the auth store if an applied command or an installed
    /// snapshot changed it. Every change bumps its revision except enabling
    /// it, so the pair tells.
    fn sync_auth(&mut self) {
        let now = self.replica.store().auth();
        let mut shared = self.auth.write().unwrap_or_else(|p| p.into_inner());
        if shared.revision() != now.revision() || shared.enabled() != now.enabled() {
            *shared = Arc::new(now.clone());
        }
    }

    /// Compacts the history as `--auto-compaction-*` say, while this member
    /// leads, through the log like any client's compaction.
    fn auto_compact(&mut self, now: u64) {
        let leader = self.replica.is_leader();
        let Some(c) = &mut self.compactor else {
            return;
        };
        if !leader {
            c.pause();
            return;
        }
        if let Some(rx) = &mut self.compacting {
            match rx.try_recv() {
                Err(oneshot::error::TryRecvError::Empty) => return,
                Ok(Ok(_)) => tracing::info!(member = %self.cfg.name, "finished auto compaction"),
                Ok(Err(e)) => {
                    tracing::warn!(member = %self.cfg.name, "auto compaction failed: {e:?}")
                }
                Err(_) => {}
            }
            self.compacting = None;
        }
        let store = self.replica.store();
        let (revision, compacted) = (store.revision(), store.compact_revision());
        if let Some(target) = c.poll(Instant::now(), revision, compacted) {
            tracing::info!(member = %self.cfg.name, revision = target, "starting auto compaction");
            let (reply, rx) = oneshot::channel();
            self.compacting = Some(rx);
            let cmd = Command::Compact { revision: target };
            self.client(now, Request::Write(cmd), reply);
        }
    }

    /// Publishes this member's name and client URLs to the cluster (as etcd
    /// does when a member starts), once a leader is known and until the
    /// cluster's record says what the flags say.
    fn publish(&mut self, now: u64) {
        if let Some(rx) = &mut self.publishing {
            match rx.try_recv() {
                Err(oneshot::error::TryRecvError::Empty) => return,
                _ => self.publishing = None,
            }
        }
        let raft = &self.replica;
        if raft.leader().is_none() || !raft.conf().contains(self.cfg.id) {
            return;
        }
        let current = self.replica.store().members().get(&self.cfg.id);
        if current.is_some_and(|r| r.name == self.cfg.name && r.client_urls == self.cfg.client_urls)
        {
            return;
        }
        let change = MemberChange::Attributes {
            id: self.cfg.id,
            name: self.cfg.name.clone(),
            client_urls: self.cfg.client_urls.clone(),
        };
        let (reply, rx) = oneshot::channel();
        self.publishing = Some(rx);
        self.client(now, Request::Write(Command::Member(change)), reply);
    }

    /// Serves a client's request here if this member leads, forwards it if
    /// another does, and parks it while nobody does.
    fn client(&mut self, now: u64, req: Request, reply: Reply) {
        if reply.is_closed() {
            return;
        }
        let id = self.next_id;
        self.next_id += 1;
        // A linearizable read is served here whoever leads if the engine can
        // ask the leader for a read index (Raft's ReadIndex); else the leader
        // serves it.
        let here = matches!(req, Request::Read(_))
            && self.replica.leader().is_some()
            && self.replica.engine().reads_at_followers();
        if !self.replica.is_leader() && !here {
            match self.replica.leader() {
                Some(leader) => {
                    if let Some(p) = self.sender(leader) {
                        let term = self.replica.term();
                        let (write, req) = match req {
                            Request::Write(cmd) => {
                                let tagged = Command::Tagged {
                                    by: self.cfg.id,
                                    id,
                                    cmd: Box::new(cmd.clone()),
                                };
                                (Some((term, Request::Write(cmd))), Request::Write(tagged))
                            }
                            req => (None, req),
                        };
                        let client = reply;
                        let f = Forwarded {
                            to: leader,
                            client,
                            write,
                            sent: Instant::now(),
                        };
                        self.forwarded_out.insert(id, f);
                        p.send(PeerMsg::Forward { id, req, term });
                        return;
                    }
                }
                None if self.parked.len() < MAX_PARKED => {
                    self.parked.push((req, reply));
                    return;
                }
                None => {
                    self.replies
                        .answer(reply, Err(ReplicaError::NotLeader { hint: None }));
                    return;
                }
            }
        }
        self.clients.insert(id, (reply, Instant::now()));
        if matches!(req, Request::Read(_)) {
            self.reads.insert(id, req.clone());
        }
        let input = ReplicaInput::Client { id, req };
        self.replica.input(now, input, &mut self.out);
    }

    /// Encodes a snapshot image on a thread of its own and hands the result
    /// back through the inbox (blocking that thread, never this one, if the
    /// inbox is full). If the member stops first, the result is dropped.
    ///
    /// The image is encoded straight into the snapshot's file (the metadata
    /// the core will give it is known now), which the core then keeps
    /// mapped: encoding into memory first cost a heap copy of the whole
    /// store, whose fresh pages the kernel zeroed (perf at 256 put clients:
    /// 3.5% of the machine), and a second pass to write it out. If the
    /// file cannot be written, the image is encoded into memory as before.
    fn encode_snapshot(&self, index: u64, image: StoreImage) {
        let own = self.own.clone();
        let meta = self.replica.engine().snapshot_meta_at(index);
        let snaps = self.disk.snap_store();
        let name = self.cfg.name.clone();
        let started = std::thread::Builder::new()
            .name("synod-snapshot-encode".into())
            .spawn(move || {
                crate::disk::background_priority();
                let streamed = meta
                    .zip(snaps)
                    .map(|(meta, snaps)| crate::disk::stream_snapshot(&snaps, meta, &image));
                let msg = match streamed {
                    Some(Ok((data, s))) => Inbox::SnapshotEncoded {
                        index,
                        data,
                        streamed: Some(s),
                    },
                    res => {
                        if let Some(Err(e)) = res {
                            tracing::warn!(member = %name, index, "snapshot not streamed to its file: {e}");
                        }
                        Inbox::SnapshotEncoded {
                            index,
                            data: image.encode(),
                            streamed: None,
                        }
                    }
                };
                let _ = own.send(msg);
            });
        if let Err(e) = started {
            // The log keeps growing until the next life of the member.
            tracing::error!(member = %self.cfg.name, "cannot start the snapshot encoder: {e}");
        }
    }

    /// Whether one sync at a time may run off this thread while the next
    /// rounds step: with two voters or more. Then the leader counts its own
    /// entries towards a commit only once a follower acknowledged them,
    /// which takes the early messages that leave as their sync starts; so
    /// when a sync is done (and before the rounds after it see answers to
    /// the next one's early messages) every commit the state shows rests on
    /// durable writes of this member. A lone voter commits its entries as it
    /// appends them, and syncs on this thread.
    fn pipelines(&self) -> bool {
        self.replica.conf().voters.len() > 1
    }

    /// Whether state may be read for others now (local jobs: reads, status,
    /// watch subscriptions): whatever it shows as committed is durable,
    /// since no round has stepped while the sync in flight, if any, was.
    fn may_read(&self) -> bool {
        self.readable
    }

    /// Persist, then send, then answer: takes the outcome of the sync in
    /// flight (its output's messages and answers go), then, if none is in
    /// flight any more, starts the next one with what the rounds since
    /// produced: on the sync thread if more input is queued, else here. An
    /// error if the disk failed: the member stops rather than answer
    /// anything it could not make durable.
    fn end_round(&mut self) -> Result<(), String> {
        if let Some((job, result, took)) = self.synced.take() {
            self.disk
                .finish_sync(job, result, took)
                .map_err(|e| format!("storage failed: {e}"))?;
            let held = self.in_flight.take().expect("a sync was in flight");
            if !self.pipelines() {
                // Only one voter left (the configuration changed during the
                // sync): what the rounds since committed may rest on their
                // own writes alone, so they are made durable before anything
                // is answered or read.
                let out = self.take_out();
                self.persist_here(&out.writes)?;
                self.release(held.msgs, held.events);
                self.release(out.msgs, out.events);
            } else {
                self.release(held.msgs, held.events);
            }
        }
        if self.in_flight.is_some() {
            // This round's output joins the next sync, and what it committed
            // may rest on the one in flight.
            self.readable = false;
            return Ok(());
        }
        self.readable = true;
        // Nothing in flight: adopt a snapshot whose file became durable
        // meanwhile (the log may be cut only while no sync holds it).
        if let Err(e) = self.disk.poll() {
            return Err(format!("storage failed: {e}"));
        }
        if let Some((index, data)) = self.disk.take_mapped() {
            let shared = self.replica.share_snapshot_data(index, data);
            tracing::debug!(index, shared, "snapshot data mapped from its file");
        }
        let mut out = self.take_out();
        // Every earlier output is durable: what the replica allows (a
        // leader's appends) leaves now, and the followers' syncs overlap ours
        // instead of following it.
        if !out.writes.is_empty() {
            // The late ones stay, in order, where they are.
            for env in out.msgs.extract_if(.., |env| env.early) {
                self.note_heartbeat(env.to, &env.msg);
                if let Some(p) = self.sender(env.to) {
                    p.send(E::wrap(env.msg));
                }
            }
            self.flush_peers();
        }
        // Likewise what the replica marked early (what it applied, unless
        // it is a quorum alone: answers, reads, watch events) is reported
        // now rather than after this round's sync: 9% more puts at 64
        // clients in an A/B. A snapshot image is never among them
        // (`RaftApp::settle`): it waits for the sync.
        debug_assert!(!out.events[..out.early_events]
            .iter()
            .any(|e| matches!(e, ReplicaEvent::SnapshotImage { .. })));
        if out.early_events > 0 {
            self.release_events(out.take_early_events());
            self.replies.flush();
        }
        if !self.pipelines() || !self.backlog {
            // Nothing to step meanwhile: handing the sync to the other
            // thread and back would only add two wake-ups to every round
            // (13% fewer puts at 16 clients in one A/B).
            self.persist_here(&out.writes)?;
            self.spare_writes(out.writes);
            self.release(out.msgs, out.events);
            return Ok(());
        }
        let job = self
            .disk
            .write(&out.writes)
            .map_err(|e| format!("storage failed: {e}"))?;
        self.spare_writes(out.writes);
        match job {
            Some(job) => {
                let syncer = match self.syncer.take() {
                    Some(s) => s,
                    None => start_syncer(self.cfg.id, self.own.clone())?,
                };
                syncer
                    .send(job)
                    .map_err(|_| "storage failed: the sync thread stopped".to_string())?;
                self.syncer = Some(syncer);
                self.in_flight = Some(Held {
                    msgs: out.msgs,
                    events: out.events,
                });
            }
            None => self.release(out.msgs, out.events),
        }
        Ok(())
    }

    /// Writes and syncs on this thread (no sync may be in flight).
    fn persist_here(&mut self, writes: &[E::Write]) -> Result<(), String> {
        debug_assert!(self.in_flight.is_none());
        self.disk
            .persist(writes)
            .map_err(|e| format!("storage failed: {e}"))
    }

    /// The output the rounds since the last call gathered. The next rounds
    /// gather theirs in vectors that earlier rounds grew, emptied
    /// ([`Driver::spare`]), instead of growing new ones from nothing.
    fn take_out(&mut self) -> Output<E::Write, E::Msg, ReplicaEvent> {
        let spare = std::mem::take(&mut self.spare);
        debug_assert!(spare.is_empty(), "spare vectors are kept emptied");
        std::mem::replace(&mut self.out, spare)
    }

    /// Keeps a round's written records' vector, emptied, for a later round.
    fn spare_writes(&mut self, mut writes: Vec<E::Write>) {
        writes.clear();
        if spare_fits(&writes, &self.spare.writes) {
            self.spare.writes = writes;
        }
    }

    /// Sends an output's messages and reports its events: its writes are
    /// durable. The emptied vectors are kept for a later round.
    fn release(&mut self, mut msgs: Vec<Envelope<E::Msg>>, mut events: Vec<ReplicaEvent>) {
        self.release_msgs(&mut msgs);
        self.release_events(events.drain(..));
        if spare_fits(&msgs, &self.spare.msgs) {
            self.spare.msgs = msgs;
        }
        if spare_fits(&events, &self.spare.events) {
            self.spare.events = events;
        }
    }

    fn release_msgs(&mut self, msgs: &mut Vec<Envelope<E::Msg>>) {
        for env in msgs.drain(..) {
            if env.to == self.cfg.id {
                // Never block on its own inbox: a full one drops the message,
                // which Raft treats as lost and sends again.
                let _ = self.own.try_send(Inbox::Peer((env.to, E::wrap(env.msg))));
            } else if let Some(p) = self.sender(env.to) {
                self.note_heartbeat(env.to, &env.msg);
                p.send(E::wrap(env.msg));
            }
        }
    }

    fn release_events(&mut self, events: impl Iterator<Item = ReplicaEvent>) {
        // Before any answer: a client told its auth change is done must find
        // it in force on its next request.
        self.sync_auth();
        for e in events {
            match e {
                ReplicaEvent::Response { id, result } => {
                    let read = self.reads.remove(&id);
                    if let (Some(req), Err(ReplicaError::LeaderChanged)) = (read, &result) {
                        if self.parked.len() < MAX_PARKED {
                            if let Some((client, _)) = self.clients.remove(&id) {
                                self.parked.push((req, client));
                                continue;
                            }
                        }
                    }
                    if matches!(result, Err(ReplicaError::LeaderChanged)) {
                        self.metrics.failed.inc();
                    }
                    if let Some((client, since)) = self.clients.remove(&id) {
                        let stages = &self.metrics.stages;
                        stages.proposed.observe(since.elapsed().as_secs_f64());
                        self.replies.answer(client, result);
                    } else if let Some((member, their)) = self.forwarded_in.remove(&id) {
                        if matches!(result, Ok(Answer::Write { .. }))
                            && self.replica.engine().terms_ordered()
                        {
                            // Applied: its sender applies the same entry and
                            // answers from its own log when it meets the tag
                            // (`Forwarded`), as etcd's followers do; a reply
                            // would only race that answer. The commit reaches
                            // it as soon as a reply would.
                            continue;
                        }
                        if let Some(p) = self.sender(member) {
                            p.send(PeerMsg::Reply { id: their, result });
                        }
                    } else if let Some(f) = self.forwarded_out.remove(&id) {
                        // A write of ours met in our own log.
                        let waited = f.sent.elapsed().as_secs_f64();
                        self.metrics.stages.forwarded.observe(waited);
                        self.replies.answer(f.client, result);
                    }
                }
                ReplicaEvent::Applied {
                    index,
                    term,
                    revision,
                    events,
                    ..
                } => {
                    self.settle_forwarded(index, term);
                    // Nobody watching (subscribing happens on this thread,
                    // between rounds): the events are dropped here rather
                    // than wrapped only to be refused by the channel.
                    if !events.is_empty() && self.feed.receiver_count() > 0 {
                        let _ = self.feed.send(Arc::new(Applied { revision, events }));
                    }
                }
                ReplicaEvent::BecameLeader { .. } => {}
                ReplicaEvent::SnapshotImage { index, image } => self.encode_snapshot(index, image),
            }
        }
    }
}

/// Whether `v` is a better spare than `kept`: larger, but not one that a
/// rare burst (a catch-up of thousands of entries) grew, kept for good.
fn spare_fits<T>(v: &Vec<T>, kept: &Vec<T>) -> bool {
    const MAX_SPARE: usize = 4096;
    v.capacity() > kept.capacity() && v.capacity() <= MAX_SPARE
}

/// Starts member `id`'s sync thread: it runs each sync it is handed and
/// posts the outcome to the member's inbox, in order. It ends when the
/// member drops its end of the channel, or stops listening.
fn start_syncer(id: NodeId, inbox: InboxTx<Inbox>) -> Result<mpsc::Sender<SyncJob>, String> {
    let (tx, rx) = mpsc::channel::<SyncJob>();
    std::thread::Builder::new()
        .name(format!("synod-sync-{id:x}"))
        .spawn(move || {
            for mut job in rx {
                let started = Instant::now();
                let result = job.sync();
                let took = started.elapsed();
                if inbox.send(Inbox::Synced { job, result, took }).is_err() {
                    return;
                }
            }
        })
        .map_err(|e| format!("storage failed: cannot start the sync thread: {e}"))?;
    Ok(tx)
}
