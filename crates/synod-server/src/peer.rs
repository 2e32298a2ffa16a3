//! Members talk over TCP: length-prefixed bincode frames of [`PeerMsg`],
//! after a [`Hello`] that says who is speaking.
//!
//! Each peer gets a writer thread that connects lazily and reconnects after a
//! failure; a message that cannot be written is dropped, which Raft tolerates
//! (it retransmits) and which a forwarded request's deadline covers. The
//! member thread writes each round's frames to that connection itself when
//! the socket takes them at once and nothing queued for the writer is left
//! ([`PeerSender`]); the writer writes the rest, in order. An accepted
//! plain connection is read by the member's own thread once its hello is
//! accepted ([`PeerStream`]), so that a message wakes the member and nothing
//! else; a TLS connection gets a reader thread that hands its messages to
//! the member. Traffic goes only where the member's configuration says.
//!
//! The hello is checked before any frame is taken: a peer of another cluster
//! (another `--initial-cluster` or token) or of another protocol version is
//! refused and its connection closed, so a misconfigured member cannot vote
//! or append here. Every later frame counts as coming from the member the
//! hello named. (Raft ids are etcd member ids; which of them are members is
//! the replicated configuration's business, not the transport's.)
//!
//! A message larger than [`CHUNK`] travels as several frames (a snapshot of
//! a large store among them), so no single frame holds it whole and the
//! receiver's memory grows only with the bytes that arrive.
//!
//! A member joining a running cluster (`--initial-cluster-state existing`)
//! first asks a peer who the cluster is ([`ask_cluster`]): the cluster id
//! and the members with their ids, as etcd asks its peers' `/members`.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::{BufReader, BufWriter, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};
use synod_kv::engine::Stamped;
use synod_kv::replica::{Answer, ReplicaError, Request};
use synod_kv::{Command, Store};
use synod_protocols::multipaxos as mp;
use synod_protocols::raft::{EntryData, Message};
use synod_protocols::NodeId;

use crate::metrics::{FromMeters, LinkMeters, PeerMeters};
use crate::peer_conn::Conn;
pub use crate::peer_conn::PeerTls;

/// The default bound on a frame (`Tuning::max_peer_frame`): a snapshot of
/// a large store, with room to spare. Memory follows the bytes that
/// actually arrive, not the length a header claims, so a lying header costs
/// nothing.
pub const MAX_FRAME: usize = 512 << 20;
/// Batches of frames (a round's each) queued for one peer's writer before
/// more are dropped. The queue's slots are allocated when it is made, so its
/// size is memory every member holds per peer; the writer drains it in one
/// go, and Raft keeps at most a few appends in flight per follower.
const PEER_QUEUE: usize = 4 * 1024;
/// Largest first frame: a hello is a few hundred bytes. Until a peer has
/// said who it is, it gets no more.
const MAX_HELLO: usize = 64 << 10;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum PeerMsg {
    Raft(Message),
    /// A follower passes a client's request to the leader it knows in
    /// `term`. The leader proposes it only in that term (else it answers
    /// "not leader" and proposes nothing), so the entry, if there is one,
    /// is of `term`: the follower can tell from its own log when a write's
    /// fate is settled (see `member::Forwarded`).
    Forward {
        id: u64,
        req: Request,
        term: u64,
    },
    /// The leader's answer to a forwarded request.
    Reply {
        id: u64,
        result: Result<Answer, ReplicaError>,
    },
    /// The receiver was removed from the cluster: it must stop (etcd's
    /// peers answer a removed member's messages the same way).
    Removed,
    /// Never on the wire: whoever reads a connection from this peer tells
    /// the member that it ended (a dead process closes all of its connections,
    /// which is how followers learn of a dead leader before any timeout).
    Closed,
    /// A Multi-Paxos message (`--engine multipaxos`). Last, so that the
    /// Raft engine's frames are what they were.
    Paxos(mp::Msg<Stamped>),
}

impl PeerMsg {
    /// Whether a correct member of this build could have sent this: a Raft
    /// message of the right shape ([`Message::check`]) whose entries hold
    /// commands and whose snapshot holds a store this build can read, so
    /// that nothing undecodable is ever appended or installed here.
    /// Forwarded requests are validated by the leader like any client's.
    pub fn check(&self) -> Result<(), String> {
        match self {
            PeerMsg::Raft(m) => {
                m.check()?;
                match m {
                    Message::Append { entries, .. } => {
                        for e in entries {
                            if let EntryData::App(p) = &e.data {
                                p.try_decode::<Command>()
                                    .map_err(|err| format!("entry {}: {err}", e.index))?;
                            }
                        }
                        Ok(())
                    }
                    Message::InstallSnapshot { snapshot, .. } => snapshot
                        .data
                        .try_decode::<Store>()
                        .map(|_| ())
                        .map_err(|err| format!("snapshot at {}: {err}", snapshot.meta.index)),
                    _ => Ok(()),
                }
            }
            PeerMsg::Paxos(m) => check_paxos(m),
            PeerMsg::Forward { .. } | PeerMsg::Reply { .. } | PeerMsg::Removed => Ok(()),
            PeerMsg::Closed => Err("a connection-closed notice never travels".into()),
        }
    }
}

/// The Multi-Paxos counterpart of [`PeerMsg::check`]: every command a
/// message carries decodes, and so does every snapshot.
fn check_paxos(m: &mp::Msg<Stamped>) -> Result<(), String> {
    let command = |slot: u64, c: &mp::Command<Stamped>| match c {
        mp::Command::App(s) => s
            .data
            .try_decode::<Command>()
            .map(|_| ())
            .map_err(|err| format!("slot {slot}: {err}")),
        _ => Ok(()),
    };
    let snapshot = |s: &mp::Snapshot| {
        s.data
            .try_decode::<Store>()
            .map(|_| ())
            .map_err(|err| format!("snapshot at slot {}: {err}", s.slot))
    };
    match m {
        mp::Msg::Accept { first, cmds, .. } | mp::Msg::Learn { first, cmds } => cmds
            .iter()
            .enumerate()
            .try_for_each(|(i, c)| command(first + i as u64, c)),
        mp::Msg::Promise {
            accepted,
            snapshot: s,
            ..
        } => {
            accepted
                .iter()
                .try_for_each(|(slot, _, c)| command(*slot, c))?;
            s.as_ref().map_or(Ok(()), snapshot)
        }
        mp::Msg::Snapshot(s) => snapshot(s),
        _ => Ok(()),
    }
}

/// Every frame after the hello: the identity agreed by the hello again,
/// then the message. A frame that names another cluster, version or sender
/// than its connection's hello (a stream out of step, or bytes spliced in)
/// closes the connection.
#[derive(Serialize)]
struct FrameOut<'a> {
    cluster_id: u64,
    version: u32,
    from: NodeId,
    msg: &'a PeerMsg,
}

impl<'a> FrameOut<'a> {
    fn new(hello: &Hello, msg: &'a PeerMsg) -> FrameOut<'a> {
        FrameOut {
            cluster_id: hello.cluster_id,
            version: PROTOCOL_VERSION,
            from: hello.from,
            msg,
        }
    }
}

#[derive(Deserialize)]
struct FrameIn {
    cluster_id: u64,
    version: u32,
    from: NodeId,
    msg: PeerMsg,
}

/// A peer's message, and the member it came from.
pub type Incoming = (NodeId, PeerMsg);

/// The peer protocol's version; a member refuses hellos of another.
/// 2: raft ids are etcd member ids, messages travel in chunks, join queries.
/// 3: a hello names the member it is for (`Hello::to`).
/// 4: appends and heartbeats say what every member holds (`held`).
pub const PROTOCOL_VERSION: u32 = 4;
const MAGIC: [u8; 4] = *b"SYNP";
/// The first bytes of a [`JoinQuery`] instead of a hello.
const JOIN_MAGIC: [u8; 4] = *b"SYNJ";
/// The largest frame on the wire; longer messages are split.
pub const CHUNK: usize = 1 << 20;
/// A frame header's top bit: more frames of the same message follow.
const MORE: u32 = 1 << 31;

/// What a member joining a running cluster asks a peer.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct JoinQuery {
    magic: [u8; 4],
    version: u32,
}

/// The cluster as a member sees it, for a member that joins.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct JoinInfo {
    pub cluster_id: u64,
    pub members: Vec<JoinMember>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct JoinMember {
    pub id: u64,
    pub name: String,
    pub peer_urls: Vec<String>,
    pub is_learner: bool,
}

/// What a listener answers a join query with.
pub type OnJoin = Arc<dyn Fn() -> JoinInfo + Send + Sync>;

/// Asks the member at `addr` who the cluster is.
pub fn ask_cluster(addr: SocketAddr, tls: Option<&PeerTls>) -> Result<JoinInfo, String> {
    let mut s = Conn::dial(addr, Duration::from_secs(1), tls).map_err(|e| e.to_string())?;
    s.sock()
        .set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    let mut w = BufWriter::new(&mut s);
    let q = JoinQuery {
        magic: JOIN_MAGIC,
        version: PROTOCOL_VERSION,
    };
    frame(&mut w, &q).map_err(|e| e.to_string())?;
    w.flush().map_err(|e| e.to_string())?;
    drop(w);
    let mut r = BufReader::new(&mut s);
    let mut body = Vec::new();
    if !read_frame(&mut r, &mut body, MAX_HELLO) {
        return Err(
            "it closed the connection without an answer (another peer protocol version?)".into(),
        );
    }
    decode::<JoinInfo>(&body).ok_or_else(|| "its answer is not a cluster description".into())
}

/// The first frame on every peer connection.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Hello {
    magic: [u8; 4],
    version: u32,
    pub cluster_id: u64,
    /// The sender's raft id and etcd member id.
    pub from: NodeId,
    pub member_id: u64,
    pub name: String,
    /// Where the sender serves clients, for MemberList on the other members.
    pub client_urls: Vec<String>,
    /// The member this connection is for. A member removed and added back
    /// gets a new id but keeps its URL: what its peers still send to the
    /// old id must not reach the new one (etcd checks `X-Raft-To` alike).
    pub to: NodeId,
}

impl Hello {
    pub fn new(
        cluster_id: u64,
        from: NodeId,
        member_id: u64,
        name: String,
        client_urls: Vec<String>,
    ) -> Hello {
        Hello {
            magic: MAGIC,
            version: PROTOCOL_VERSION,
            cluster_id,
            from,
            member_id,
            name,
            client_urls,
            to: 0,
        }
    }

    /// The same hello, for a connection to member `id`.
    pub fn to(&self, id: NodeId) -> Hello {
        Hello {
            to: id,
            ..self.clone()
        }
    }
}

/// What a listener accepts: peers of this member's cluster.
#[derive(Clone, Debug)]
pub struct Expect {
    pub cluster_id: u64,
    /// This member's id: hellos addressed to another are refused.
    pub member_id: NodeId,
    /// The largest message taken after the hello (all its frames together).
    pub max_frame: usize,
}

impl Expect {
    /// Why `hello` is refused, if it is.
    pub fn refusal(&self, hello: &Hello) -> Option<String> {
        if hello.magic != MAGIC || hello.version != PROTOCOL_VERSION {
            return Some(format!(
                "it speaks peer protocol version {}, this member {PROTOCOL_VERSION}",
                hello.version
            ));
        }
        if hello.cluster_id != self.cluster_id {
            return Some(format!(
                "it belongs to cluster {:x}, this member to cluster {:x} \
                 (check --initial-cluster and --initial-cluster-token on both)",
                hello.cluster_id, self.cluster_id
            ));
        }
        if hello.to != self.member_id {
            return Some(format!(
                "it addresses member {:x}, this is member {:x} (a member removed and added \
                 back under a new id keeps its URL; its peers may still send to the old id)",
                hello.to, self.member_id
            ));
        }
        if hello.from != hello.member_id {
            return Some(format!(
                "it says it is member {:x} ({}) but speaks as raft id {:x}",
                hello.member_id, hello.name, hello.from
            ));
        }
        None
    }
}

/// What a listener learns from the hellos it accepts: a peer's name and
/// client URLs, by raft id.
pub type OnHello = Arc<dyn Fn(&Hello) + Send + Sync>;

/// Since when each peer has been reachable without a break: its writer's
/// connection has stood since then. etcd's `--strict-reconfig-check` reads
/// it (a peer missing is not connected now).
pub type ActiveSince = Arc<Mutex<BTreeMap<u64, Instant>>>;

/// Sends to one peer; cheap to clone.
///
/// The member frames its messages into a buffer as it steps and hands each
/// round's bytes over at once ([`PeerSender::flush`]). Over plain TCP it
/// writes them itself, without blocking, whenever the peer's writer thread
/// has nothing of its own left to write: waking that thread for every round
/// cost a context switch on each side of most messages (a quarter of all
/// of a member's switches under linearizable reads). Bytes the socket does
/// not take at once, and everything while the writer is busy, connecting,
/// or speaking TLS, go to the writer, in order.
#[derive(Clone)]
pub struct PeerSender {
    inner: Arc<SenderInner>,
}

struct SenderInner {
    hello: Arc<Hello>,
    tx: mpsc::SyncSender<Vec<u8>>,
    /// Frames of this round not yet handed over; only the member thread
    /// touches it.
    round: Mutex<Vec<u8>>,
    direct: Arc<Direct>,
    meters: LinkMeters,
}

/// What the member thread and a peer's writer thread share.
#[derive(Default)]
struct Direct {
    /// The writer's current connection, when it is plain TCP: the member may
    /// write to it while `queued` is 0. The writer holds the lock whenever it
    /// replaces or checks the connection.
    sock: Mutex<Option<TcpStream>>,
    /// Batches handed to the writer and not yet written whole. Bytes written
    /// directly must not overtake them.
    queued: AtomicUsize,
    #[cfg(test)]
    written_directly: AtomicUsize,
}

/// Bytes a round buffers for one peer before they are handed over early.
const ROUND_BYTES: usize = 1 << 20;

impl PeerSender {
    /// Starts the writer thread for peer `id` at `addr`, which opens every
    /// connection with `hello` and keeps `active` up to date for `id`.
    pub fn start(
        hello: Arc<Hello>,
        id: u64,
        addr: SocketAddr,
        active: ActiveSince,
        tls: Option<Arc<PeerTls>>,
        meters: &PeerMeters,
    ) -> PeerSender {
        let (tx, rx) = mpsc::sync_channel::<Vec<u8>>(PEER_QUEUE);
        let direct = Arc::new(Direct::default());
        let shared = direct.clone();
        let to = hello.to(id);
        let meters = meters.link(hello.from, id);
        let counted = meters.clone();
        std::thread::Builder::new()
            .name(format!("synod-peer-to-{addr}"))
            .spawn(move || {
                let mut link = Link {
                    id,
                    active,
                    meters: counted,
                };
                writer(&to, addr, rx, &mut link, tls.as_deref(), &shared);
                link.set(false);
            })
            .expect("spawn peer writer");
        PeerSender {
            inner: Arc::new(SenderInner {
                hello,
                tx,
                round: Mutex::new(Vec::new()),
                direct,
                meters,
            }),
        }
    }

    /// Frames `msg` for the peer; it leaves with the next [`flush`](Self::flush).
    pub fn send(&self, msg: PeerMsg) {
        let full = {
            let mut round = lock(&self.inner.round);
            frame_into(&mut round, &FrameOut::new(&self.inner.hello, &msg));
            round.len() >= ROUND_BYTES
        };
        if full {
            self.flush();
        }
    }

    /// Sends what this round framed: written at once if the socket takes it,
    /// else queued for the writer; dropped if the queue is full (the peer is
    /// slow or gone): Raft sends again, and a forwarded request's deadline
    /// covers its loss. The member thread never blocks here.
    pub fn flush(&self) {
        let mut round = lock(&self.inner.round);
        if round.is_empty() {
            return;
        }
        let rest = self.inner.direct.write(&round);
        let meters = &self.inner.meters;
        if rest == round.len() {
            let bytes = std::mem::take(&mut *round);
            if !self.inner.queue(bytes) {
                meters.sent_failures.inc();
            }
            return;
        }
        meters.sent.inc_by((round.len() - rest) as u64);
        let bytes = round[round.len() - rest..].to_vec();
        round.clear();
        if !self.inner.queue(bytes) {
            meters.sent_failures.inc();
            // Part of a frame went out and the rest cannot follow: end the
            // connection rather than leave the peer a stream out of step.
            self.inner.direct.cut();
        }
    }
}

impl SenderInner {
    /// Hands `bytes` to the writer; false if its queue is full.
    fn queue(&self, bytes: Vec<u8>) -> bool {
        if bytes.is_empty() {
            return true;
        }
        self.direct.queued.fetch_add(1, Ordering::SeqCst);
        if self.tx.try_send(bytes).is_err() {
            self.direct.queued.fetch_sub(1, Ordering::SeqCst);
            return false;
        }
        true
    }
}

impl Drop for SenderInner {
    /// What the last round framed still goes (a removed member's notice
    /// among it).
    fn drop(&mut self) {
        let round = std::mem::take(&mut *lock(&self.round));
        let _ = self.queue(round);
    }
}

impl Direct {
    /// Writes a prefix of `bytes` to the connection without blocking, if
    /// nothing queued for the writer is still unwritten and the writer is
    /// not at the connection; returns how many bytes are left.
    fn write(&self, bytes: &[u8]) -> usize {
        if self.queued.load(Ordering::SeqCst) != 0 {
            return bytes.len();
        }
        let Ok(mut sock) = self.sock.try_lock() else {
            return bytes.len();
        };
        let Some(s) = sock.as_ref() else {
            return bytes.len();
        };
        let mut done = 0;
        while done < bytes.len() {
            match send_now(s, &bytes[done..]) {
                Ok(n) => {
                    done += n;
                    #[cfg(test)]
                    self.written_directly.fetch_add(n, Ordering::SeqCst);
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(_) => {
                    // Broken: the writer finds out on its own write, and
                    // connects again.
                    *sock = None;
                    break;
                }
            }
        }
        bytes.len() - done
    }

    /// Shuts the connection down; the writer connects again.
    fn cut(&self) {
        if let Some(s) = lock(&self.sock).take() {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }
}

/// One non-blocking `send` on a blocking socket (the writer thread shares
/// it and blocks on its own writes).
fn send_now(s: &TcpStream, bytes: &[u8]) -> std::io::Result<usize> {
    use std::os::fd::AsRawFd;
    // SAFETY: the pointer and length describe a live slice, and the file
    // descriptor stays open while `s` is borrowed.
    let n = unsafe {
        libc::send(
            s.as_raw_fd(),
            bytes.as_ptr().cast(),
            bytes.len(),
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        )
    };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(n as usize)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// How often an idle writer makes sure it is connected: every member says
/// hello to every other soon after it starts (followers send each other
/// nothing else, but each must know the others' client URLs).
const IDLE_CHECK: Duration = Duration::from_secs(1);

fn connect(
    hello: &Hello,
    addr: SocketAddr,
    tls: Option<&PeerTls>,
    link: &Link,
) -> Option<BufWriter<Conn>> {
    let s = Conn::dial(addr, Duration::from_millis(200), tls).ok()?;
    let mut w = BufWriter::new(s);
    frame(&mut w, hello).ok()?;
    let n = w.buffer().len();
    w.flush().ok()?;
    link.meters.sent.inc_by(n as u64);
    Some(w)
}

/// Whether the peer has closed `conn` (it restarted, or refused our hello).
/// Peers never write on a connection they accepted: any readable byte or
/// end of stream means it is over.
fn closed(conn: &mut BufWriter<Conn>) -> bool {
    conn.get_mut().closed()
}

/// A writer's record of whether its peer is reachable, and its counts.
struct Link {
    id: u64,
    active: ActiveSince,
    meters: LinkMeters,
}

impl Link {
    fn set(&mut self, up: bool) {
        let mut map = lock(&self.active);
        if up {
            map.entry(self.id).or_insert_with(Instant::now);
            self.meters.active.set(1);
        } else if map.remove(&self.id).is_some() {
            self.meters.active.set(0);
            self.meters.disconnected.inc();
        }
    }
}

/// The writer's connection, shared with the member for direct writes.
struct Connection<'a> {
    conn: Option<BufWriter<Conn>>,
    direct: &'a Direct,
}

impl Connection<'_> {
    /// Replaces the connection (`None`: down), under the lock the member's
    /// direct writes take.
    fn set(&mut self, conn: Option<BufWriter<Conn>>, link: &mut Link) {
        let mut sock = lock(&self.direct.sock);
        self.conn = conn;
        *sock = match self.conn.as_ref().map(|w| w.get_ref()) {
            Some(Conn::Plain(s)) => s.try_clone().ok(),
            _ => None,
        };
        link.set(self.conn.is_some());
    }

    /// Whether the connection is up and the peer has not closed it.
    fn open(&mut self) -> bool {
        let _sock = lock(&self.direct.sock);
        self.conn.as_mut().is_some_and(|c| !closed(c))
    }
}

fn writer(
    hello: &Hello,
    addr: SocketAddr,
    rx: mpsc::Receiver<Vec<u8>>,
    link: &mut Link,
    tls: Option<&PeerTls>,
    direct: &Direct,
) {
    let mut c = Connection { conn: None, direct };
    c.set(connect(hello, addr, tls, link), link);
    loop {
        let first = match rx.recv_timeout(IDLE_CHECK) {
            Ok(m) => m,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if !c.open() {
                    // A reconnect counts from now: the peer was down.
                    c.set(None, link);
                    c.set(connect(hello, addr, tls, link), link);
                }
                continue;
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
        };
        if c.conn.is_none() {
            c.set(connect(hello, addr, tls, link), link);
        }
        // Batch whatever else is queued into the same flush.
        let mut batch = vec![first];
        while let Ok(m) = rx.try_recv() {
            batch.push(m);
        }
        let n = batch.len();
        match c.conn.as_mut() {
            // Peer down: drop what is queued now rather than let it pile up.
            None => link.meters.sent_failures.inc_by(n as u64),
            Some(w) => {
                let ok = batch.iter().all(|b| w.write_all(b).is_ok()) && w.flush().is_ok();
                if ok {
                    let bytes: usize = batch.iter().map(Vec::len).sum();
                    link.meters.sent.inc_by(bytes as u64);
                } else {
                    link.meters.sent_failures.inc_by(n as u64);
                    c.set(None, link);
                }
            }
        }
        direct.queued.fetch_sub(n, Ordering::SeqCst);
    }
}

/// Writes `msg` as one frame, or as several of at most [`CHUNK`] bytes.
fn frame(w: &mut impl Write, msg: &impl Serialize) -> std::io::Result<()> {
    let body = bincode::serialize(msg).expect("peer messages serialize");
    frame_body(w, &body)
}

/// [`frame`] into memory. Most messages fit one frame, so the body is
/// serialized in place after room for its header, not copied there.
fn frame_into(buf: &mut Vec<u8>, msg: &impl Serialize) {
    let start = buf.len();
    buf.extend_from_slice(&[0; 4]);
    bincode::serialize_into(&mut *buf, msg).expect("peer messages serialize");
    let n = buf.len() - start - 4;
    if n <= CHUNK {
        buf[start..start + 4].copy_from_slice(&(n as u32).to_le_bytes());
        return;
    }
    let body = buf.split_off(start + 4);
    buf.truncate(start);
    frame_body(buf, &body).expect("framing into memory cannot fail");
}

fn frame_body(w: &mut impl Write, body: &[u8]) -> std::io::Result<()> {
    let mut chunks = body.chunks(CHUNK).peekable();
    if chunks.peek().is_none() {
        return w.write_all(&0u32.to_le_bytes());
    }
    while let Some(chunk) = chunks.next() {
        let more = if chunks.peek().is_some() { MORE } else { 0 };
        w.write_all(&(chunk.len() as u32 | more).to_le_bytes())?;
        w.write_all(chunk)?;
    }
    Ok(())
}

/// Stops a member's peer listener when dropped, freeing its port (so the
/// member can be restarted on the same address).
pub struct Listening {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
}

impl Drop for Listening {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept call so the thread sees the flag and closes the socket.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_millis(200));
    }
}

/// What a listener hands its member.
pub enum PeerInput {
    /// A message read by a reader thread (a TLS connection's).
    Msg(Incoming),
    /// A plain connection whose hello was accepted, for the member's own
    /// thread to read ([`PeerStream`]).
    Stream(PeerStream),
}

/// Hands a listener's input to its member; false once the member is gone.
pub type Deliver = Arc<dyn Fn(PeerInput) -> bool + Send + Sync>;

/// Accepts peers on `listener` until the returned guard is dropped. A plain
/// connection goes to `deliver` once its hello is accepted; a TLS one gets
/// a reader thread that delivers every message, until the member is gone.
pub fn listen(
    listener: TcpListener,
    expect: Expect,
    on_hello: OnHello,
    on_join: OnJoin,
    deliver: Deliver,
    tls: Option<Arc<PeerTls>>,
    meters: PeerMeters,
) -> std::io::Result<Listening> {
    let addr = listener.local_addr()?;
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let expect = Arc::new(expect);
    std::thread::Builder::new()
        .name("synod-peer-accept".into())
        .spawn(move || {
            for stream in listener.incoming() {
                if flag.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(stream) = stream else { continue };
                let deliver = deliver.clone();
                let (expect, on_hello) = (expect.clone(), on_hello.clone());
                let on_join = on_join.clone();
                let tls = tls.clone();
                let meters = meters.clone();
                let _ = std::thread::Builder::new()
                    .name("synod-peer-read".into())
                    .spawn(move || {
                        let remote = stream.peer_addr().ok();
                        // The TLS handshake runs here, off the accept thread.
                        match Conn::accept(stream, tls.as_deref()) {
                            Ok(conn) => {
                                let ends = Ends {
                                    on_hello: &on_hello,
                                    on_join: &on_join,
                                    deliver: &deliver,
                                    meters: &meters,
                                };
                                reader(conn, &expect, &ends);
                            }
                            Err(e) => refused(remote, &format!("TLS handshake failed: {e}")),
                        }
                    });
            }
        })?;
    Ok(Listening { addr, stop })
}

/// Reads one message (one frame, or the frames of a split one) into
/// `body`; false at the end of the stream, on an error, on a frame longer
/// than [`CHUNK`], or on a message longer than `max`.
pub(crate) fn read_frame(r: &mut impl Read, body: &mut Vec<u8>, max: usize) -> bool {
    body.clear();
    loop {
        let mut len = [0u8; 4];
        if r.read_exact(&mut len).is_err() {
            return false;
        }
        let Some((n, more)) = frame_header(len, body.len(), max) else {
            return false;
        };
        // Grows with what arrives: a header that promises a megabyte and
        // sends nothing allocates nothing.
        let before = body.len();
        if !matches!(r.take(n as u64).read_to_end(body), Ok(got) if got == n) {
            return false;
        }
        debug_assert_eq!(body.len(), before + n);
        if !more {
            return true;
        }
    }
}

/// A frame's header: its body's length, and whether more frames of the same
/// message follow; `None` for a frame longer than [`CHUNK`], or one that
/// would take the message (`so_far` bytes before it) past `max`.
fn frame_header(header: [u8; 4], so_far: usize, max: usize) -> Option<(usize, bool)> {
    let header = u32::from_le_bytes(header);
    let n = (header & !MORE) as usize;
    (n <= CHUNK && so_far + n <= max).then_some((n, header & MORE != 0))
}

/// Decodes a peer frame's body; an error (never a panic) for bytes that are
/// not one, which ends the connection.
pub(crate) fn decode<T: serde::de::DeserializeOwned>(body: &[u8]) -> Option<T> {
    use bincode::Options;
    bincode::DefaultOptions::new()
        .with_fixint_encoding()
        .with_limit(MAX_FRAME as u64)
        .deserialize(body)
        .ok()
}

/// Where a reader hands what it reads, and what it counts.
struct Ends<'a> {
    on_hello: &'a OnHello,
    on_join: &'a OnJoin,
    deliver: &'a Deliver,
    meters: &'a PeerMeters,
}

fn reader(stream: Conn, expect: &Expect, ends: &Ends<'_>) {
    let Ends {
        on_hello,
        on_join,
        deliver,
        meters,
    } = *ends;
    let remote = stream.sock().peer_addr().ok();
    let mut r = BufReader::new(stream);
    let mut body = Vec::new();
    if !read_frame(&mut r, &mut body, MAX_HELLO) {
        refused(remote, "its first frame is not a synod peer hello");
        return;
    }
    if body.starts_with(&JOIN_MAGIC) {
        match decode::<JoinQuery>(&body) {
            Some(q) if q.version == PROTOCOL_VERSION => {
                let mut w = BufWriter::new(r.get_mut());
                let _ = frame(&mut w, &on_join()).and_then(|()| w.flush());
            }
            _ => refused(
                remote,
                "it asked who the cluster is in another protocol version",
            ),
        }
        return;
    }
    let hello = match decode::<Hello>(&body) {
        Some(h) => h,
        None => {
            refused(remote, "its first frame is not a synod peer hello");
            return;
        }
    };
    if let Some(why) = expect.refusal(&hello) {
        refused(remote, &why);
        return;
    }
    on_hello(&hello);
    let from = hello.from;
    let counts = meters.from(from);
    // One header per message, even for one split into several frames.
    counts.received.inc_by(4 + body.len() as u64);
    if matches!(r.get_ref(), Conn::Plain(_)) {
        // The member's thread reads it from here on, beginning with what
        // this reader's buffer already holds.
        let early = r.buffer().to_vec();
        let Conn::Plain(sock) = r.into_inner() else {
            unreachable!("checked plain above")
        };
        match PeerStream::new(sock, remote, &hello, expect.max_frame, early, counts) {
            Ok(s) => {
                deliver(PeerInput::Stream(s));
            }
            Err(e) => refused(remote, &format!("its connection failed: {e}")),
        }
        return;
    }
    loop {
        if !read_frame(&mut r, &mut body, expect.max_frame) {
            let _ = deliver(PeerInput::Msg((from, PeerMsg::Closed)));
            return;
        }
        counts.received.inc_by(4 + body.len() as u64);
        // A frame that does not decode ends the connection: the peer speaks
        // something else, or the stream is out of step.
        let msg = match message(&body, &hello) {
            Ok(msg) => msg,
            Err(why) => {
                counts.failures.inc();
                refused(remote, &why);
                return;
            }
        };
        if !deliver(PeerInput::Msg((from, msg))) {
            return;
        }
    }
}

/// The message in a frame's `body` on a connection that said `hello`, or
/// why the connection must end: the frame does not decode (the peer speaks
/// something else, or the stream is out of step), names another cluster,
/// version or sender than the hello did, or holds what no correct member
/// sends ([`PeerMsg::check`]).
fn message(body: &[u8], hello: &Hello) -> Result<PeerMsg, String> {
    let Some(FrameIn {
        cluster_id,
        version,
        from,
        msg,
    }) = decode::<FrameIn>(body)
    else {
        return Err("it sent a frame that is not a peer message".into());
    };
    if (cluster_id, version, from) != (hello.cluster_id, hello.version, hello.from) {
        return Err(format!(
            "a frame names cluster {cluster_id:x}, version {version}, member {from}, \
             not what its hello said"
        ));
    }
    msg.check()
        .map_err(|why| format!("it sent a malformed message: {why}"))?;
    Ok(msg)
}

/// Bytes a [`PeerStream`] reads in one go before its member steps what
/// they hold: a snapshot arriving does not hold up a round for long.
const STREAM_READ: usize = 1 << 20;
/// A [`PeerStream`]'s buffers larger than this are freed once emptied.
const BIG_BUFFER: usize = 4 << 20;

/// A peer's plain connection, read by the member's own thread without
/// blocking, so that a message wakes one thread (the member's) instead of
/// two (a reader thread's, then the member's).
pub struct PeerStream {
    pub from: NodeId,
    sock: TcpStream,
    remote: Option<SocketAddr>,
    hello: Hello,
    max: usize,
    /// Bytes read and not yet taken as frames, from `at` on.
    buf: Vec<u8>,
    at: usize,
    /// The frames so far of a message split into several.
    body: Vec<u8>,
    meters: FromMeters,
}

/// What reading a [`PeerStream`] left it as.
#[derive(Debug, PartialEq, Eq)]
pub enum StreamState {
    Open,
    /// Ended by the peer, by an error, or by a frame longer than allowed.
    Closed,
    /// Ended because of what the peer sent (logged).
    Refused,
}

impl PeerStream {
    fn new(
        sock: TcpStream,
        remote: Option<SocketAddr>,
        hello: &Hello,
        max: usize,
        early: Vec<u8>,
        meters: FromMeters,
    ) -> std::io::Result<PeerStream> {
        sock.set_nonblocking(true)?;
        meters.received.inc_by(early.len() as u64);
        Ok(PeerStream {
            meters,
            from: hello.from,
            sock,
            remote,
            hello: hello.clone(),
            max,
            buf: early,
            at: 0,
            body: Vec::new(),
        })
    }

    pub fn fd(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsRawFd;
        self.sock.as_raw_fd()
    }

    /// Reads what has arrived (up to [`STREAM_READ`] bytes), without
    /// blocking, and hands each whole message to `out`, in order.
    pub fn read(&mut self, out: &mut impl FnMut(PeerMsg)) -> StreamState {
        let ended = self.fill();
        if let Err(why) = self.frames(out) {
            return why;
        }
        if ended {
            return StreamState::Closed;
        }
        StreamState::Open
    }

    /// Reads into `buf`; true at the end of the stream or on an error.
    fn fill(&mut self) -> bool {
        if self.at > 0 {
            self.buf.drain(..self.at);
            self.at = 0;
        }
        // A snapshot's worth of buffer is not kept for the small messages
        // after it.
        if self.buf.is_empty() && self.buf.capacity() > BIG_BUFFER {
            self.buf = Vec::new();
        }
        let before = self.buf.len();
        let ended = self.receive();
        self.meters
            .received
            .inc_by((self.buf.len() - before) as u64);
        ended
    }

    /// Appends what the socket holds to `buf`, up to [`STREAM_READ`] bytes;
    /// true at the end of the stream or on an error.
    fn receive(&mut self) -> bool {
        let fd = self.fd();
        let mut got = 0;
        while got < STREAM_READ {
            self.buf.reserve(64 << 10);
            let spare = self.buf.spare_capacity_mut();
            // SAFETY: receives at most `spare.len()` bytes into the vector's
            // spare capacity, a live allocation; the file descriptor is open
            // while `self.sock` is.
            let n = unsafe {
                libc::recv(
                    fd,
                    spare.as_mut_ptr().cast(),
                    spare.len(),
                    libc::MSG_DONTWAIT,
                )
            };
            if n > 0 {
                let n = n as usize;
                // SAFETY: the kernel initialised the first `n` spare bytes.
                unsafe { self.buf.set_len(self.buf.len() + n) };
                got += n;
                continue;
            }
            if n == 0 {
                return true;
            }
            let e = std::io::Error::last_os_error();
            match e.kind() {
                std::io::ErrorKind::WouldBlock => return false,
                std::io::ErrorKind::Interrupted => {}
                _ => return true,
            }
        }
        false
    }

    /// Takes every whole message out of `buf`.
    fn frames(&mut self, out: &mut impl FnMut(PeerMsg)) -> Result<(), StreamState> {
        loop {
            let rest = &self.buf[self.at..];
            let Some(len) = rest.get(..4) else {
                return Ok(());
            };
            let header = len.try_into().expect("four bytes");
            let Some((n, more)) = frame_header(header, self.body.len(), self.max) else {
                self.meters.failures.inc();
                return Err(StreamState::Closed);
            };
            let Some(chunk) = rest.get(4..4 + n) else {
                return Ok(());
            };
            self.at += 4 + n;
            if more {
                self.body.extend_from_slice(chunk);
                continue;
            }
            let whole = if self.body.is_empty() {
                message(chunk, &self.hello)
            } else {
                self.body.extend_from_slice(chunk);
                let m = message(&self.body, &self.hello);
                self.body.clear();
                if self.body.capacity() > BIG_BUFFER {
                    self.body = Vec::new();
                }
                m
            };
            match whole {
                Ok(msg) => out(msg),
                Err(why) => {
                    self.meters.failures.inc();
                    refused(self.remote, &why);
                    return Err(StreamState::Refused);
                }
            }
        }
    }
}

/// Says why a peer connection was closed, at most once a minute per remote
/// host: a misconfigured peer retries with every message it has.
fn refused(remote: Option<SocketAddr>, why: &str) {
    static LAST: Mutex<BTreeMap<std::net::IpAddr, Instant>> = Mutex::new(BTreeMap::new());
    let ip = remote.map_or(std::net::IpAddr::from([0, 0, 0, 0]), |a| a.ip());
    let mut last = LAST.lock().unwrap_or_else(|p| p.into_inner());
    let now = Instant::now();
    if last
        .get(&ip)
        .is_some_and(|t| now.duration_since(*t) < Duration::from_secs(60))
    {
        return;
    }
    last.insert(ip, now);
    let who = remote.map_or("a peer".to_string(), |a| a.to_string());
    tracing::warn!(peer = %who, "refused a peer connection: {why}");
}

#[cfg(test)]
mod tests {
    //! Bounded fuzzing of the peer edge: whatever bytes arrive, framing and
    //! decoding give a message or a closed connection, never a panic.
    use super::*;
    use proptest::prelude::*;
    use synod_protocols::raft::{Entry, Payload};

    /// Everything a reader does with a connection's bytes, minus the socket.
    fn read_all(bytes: &[u8]) -> usize {
        let mut r = bytes;
        let mut body = Vec::new();
        if !read_frame(&mut r, &mut body, MAX_HELLO) || decode::<Hello>(&body).is_none() {
            return 0;
        }
        let mut taken = 0;
        while read_frame(&mut r, &mut body, MAX_FRAME) {
            match decode::<FrameIn>(&body) {
                Some(f) if f.cluster_id == 1 && f.from == 0 && f.msg.check().is_ok() => taken += 1,
                _ => break,
            }
        }
        taken
    }

    /// A member removed and added back under a new id keeps its URL; what
    /// its peers still address to the old id is refused.
    #[test]
    fn a_hello_for_another_member_id_is_refused() {
        let expect = Expect {
            cluster_id: 1,
            member_id: 7,
            max_frame: MAX_FRAME,
        };
        let hello = Hello::new(1, 2, 2, "n2".into(), vec![]);
        assert_eq!(expect.refusal(&hello.to(7)), None);
        let why = expect.refusal(&hello.to(8)).expect("refused");
        assert!(
            why.contains("addresses member 8, this is member 7"),
            "{why}"
        );
    }

    fn hello() -> Vec<u8> {
        let mut out = Vec::new();
        frame(&mut out, &Hello::new(1, 0, 2, "n".into(), vec![])).unwrap();
        out
    }

    fn append() -> Vec<u8> {
        let msg = PeerMsg::Raft(Message::Append {
            term: 3,
            prev_index: 7,
            prev_term: 2,
            entries: (8..11)
                .map(|index| Entry {
                    index,
                    term: 3,
                    data: EntryData::App(Payload::encode(&Command::LeaseRevoke { id: 7 })),
                })
                .collect(),
            commit: 8,
            held: 0,
        });
        let mut out = Vec::new();
        let framed = FrameOut {
            cluster_id: 1,
            version: PROTOCOL_VERSION,
            from: 0,
            msg: &msg,
        };
        frame(&mut out, &framed).unwrap();
        out
    }

    /// Waits (in `poll`, no sleeps) until `s` has something to read, then
    /// reads it; the messages' terms, and how the stream stands.
    fn read_ready(s: &mut PeerStream, terms: &mut Vec<u64>) -> StreamState {
        let mut fds = [libc::pollfd {
            fd: s.fd(),
            events: libc::POLLIN,
            revents: 0,
        }];
        // SAFETY: one live pollfd.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 1, 30_000) };
        assert_eq!(n, 1, "nothing arrived within 30 s");
        s.read(&mut |m| match m {
            PeerMsg::Raft(Message::Append { term, .. }) => terms.push(term),
            other => panic!("unexpected {other:?}"),
        })
    }

    /// A stream the member reads itself: messages cut anywhere by the
    /// network, and one longer than a frame, come out whole and in order;
    /// a frame that is not a peer message ends the stream as refused, and
    /// the peer's close as closed.
    #[test]
    fn a_peer_stream_takes_messages_however_they_arrive() {
        use std::io::Write;
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut w = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (conn, _) = listener.accept().unwrap();
        let hello = Hello::new(1, 0, 2, "n".into(), vec![]);
        let mut bytes = append();
        let one = bytes.len();
        // The first frames arrived with the hello, in the reader's buffer.
        let early = bytes.clone();
        let meters = PeerMeters::detached().from(1);
        let mut s = PeerStream::new(conn, None, &hello, MAX_FRAME, early, meters).unwrap();
        let mut terms = Vec::new();
        // A message split in frames of CHUNK bytes: a snapshot-sized body.
        let big = PeerMsg::Raft(Message::Append {
            term: 9,
            prev_index: 0,
            prev_term: 0,
            entries: vec![Entry {
                index: 1,
                term: 9,
                data: EntryData::App(Payload::encode(&Command::Put(synod_kv::PutRequest {
                    key: b"k".to_vec(),
                    value: vec![7; CHUNK + CHUNK / 2],
                    ..Default::default()
                }))),
            }],
            commit: 0,
            held: 0,
        });
        let mut split = Vec::new();
        frame_into(&mut split, &FrameOut::new(&hello, &big));
        bytes.extend_from_slice(&split);
        bytes.extend_from_slice(&append());
        // Written in pieces that cut headers and bodies at odd places.
        let reader = std::thread::spawn(move || {
            let mut terms = Vec::new();
            while terms.len() < 4 {
                assert_eq!(read_ready(&mut s, &mut terms), StreamState::Open);
            }
            (s, terms)
        });
        for piece in bytes.chunks(one / 3 + 1) {
            w.write_all(piece).unwrap();
        }
        let (mut s, got) = reader.join().unwrap();
        terms.extend(got);
        assert_eq!(terms, vec![3, 3, 9, 3]);
        // Bytes that frame well but decode to no peer message.
        w.write_all(&[3, 0, 0, 0, 0xff, 0xff, 0xff]).unwrap();
        let mut more = Vec::new();
        assert_eq!(read_ready(&mut s, &mut more), StreamState::Refused);
        assert!(more.is_empty());
        // A clean end, after one last message.
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut w = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (conn, _) = listener.accept().unwrap();
        let meters = PeerMeters::detached().from(1);
        let mut s = PeerStream::new(conn, None, &hello, MAX_FRAME, Vec::new(), meters).unwrap();
        w.write_all(&append()).unwrap();
        drop(w);
        let mut last = Vec::new();
        while read_ready(&mut s, &mut last) == StreamState::Open {}
        assert_eq!(last, vec![3]);
    }

    /// The member writes a round's frames itself when the socket takes them
    /// and hands the rest to the writer thread: whichever wrote what, and
    /// wherever a round was cut, the peer reads every frame whole and in
    /// order.
    #[test]
    fn frames_arrive_whole_and_in_order_whichever_thread_writes_them() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let hello = Arc::new(Hello::new(1, 0, 2, "n".into(), vec![]));
        let meters = PeerMeters::detached();
        let sender = PeerSender::start(hello, 9, addr, ActiveSince::default(), None, &meters);
        let (conn, _) = listener.accept().unwrap();
        let mut r = BufReader::new(conn);
        let mut body = Vec::new();
        assert!(read_frame(&mut r, &mut body, MAX_HELLO));
        assert!(decode::<Hello>(&body).is_some_and(|h| h.to == 9));
        // The writer hands its socket over just after the hello.
        let direct = sender.inner.direct.clone();
        let mut waits = 0;
        while lock(&direct.sock).is_none() {
            waits += 1;
            assert!(waits < 1_000_000, "the writer never shared its socket");
            std::thread::yield_now();
        }
        let data = Payload::encode(&Command::Put(synod_kv::PutRequest {
            key: b"k".to_vec(),
            value: vec![7; 16 << 10],
            ..Default::default()
        }));
        let per_round = 4u64;
        let send_round = |round: u64| {
            for k in 0..per_round {
                sender.send(PeerMsg::Raft(Message::Append {
                    term: round * per_round + k,
                    prev_index: 0,
                    prev_term: 0,
                    entries: vec![Entry {
                        index: 1,
                        term: 1,
                        data: EntryData::App(data.clone()),
                    }],
                    commit: 0,
                    held: 0,
                }));
            }
            sender.flush();
        };
        // 32 MiB unread, more than loopback's socket buffers hold: later
        // rounds meet a full socket, are cut short or queued whole...
        let (filling, more) = (512u64, 512u64);
        for round in 0..filling {
            send_round(round);
        }
        assert!(direct.written_directly.load(Ordering::SeqCst) > 0);
        assert!(
            direct.queued.load(Ordering::SeqCst) > 0,
            "nothing was queued"
        );
        // ...and go on while the peer drains the socket under the queued
        // ones, a little at a time: the socket has room now and then while
        // the writer still holds queued bytes.
        let frames = (filling + more) * per_round;
        let read = Arc::new(AtomicUsize::new(0));
        let progress = read.clone();
        let reader = std::thread::spawn(move || {
            let mut terms = Vec::new();
            while (terms.len() as u64) < frames && read_frame(&mut r, &mut body, MAX_FRAME) {
                progress.fetch_add(1, Ordering::SeqCst);
                let f = decode::<FrameIn>(&body).expect("a whole frame");
                assert_eq!((f.cluster_id, f.from), (1, 0));
                match f.msg {
                    PeerMsg::Raft(Message::Append { term, .. }) => terms.push(term),
                    other => panic!("{other:?}"),
                }
            }
            terms
        });
        'sending: for i in 0..more {
            let mut waits = 0u64;
            while (read.load(Ordering::SeqCst) as u64) < (i + 1) * per_round {
                if reader.is_finished() {
                    // It met a frame out of step (its panic says which).
                    break 'sending;
                }
                waits += 1;
                assert!(waits < 100_000_000, "the reader stalled");
                std::thread::yield_now();
            }
            send_round(filling + i);
        }
        let terms = reader.join().expect("the reader");
        assert_eq!(terms, (0..frames).collect::<Vec<_>>());
    }

    /// In place or copied, one frame or many: the same bytes.
    #[test]
    fn frames_built_in_place_are_the_frames_written() {
        for len in [0, 1, 100, CHUNK - 16, CHUNK, 2 * CHUNK + 5] {
            let msg = vec![9u8; len];
            let mut written = Vec::new();
            frame(&mut written, &msg).unwrap();
            let mut built = b"before".to_vec();
            frame_into(&mut built, &msg);
            assert_eq!(&built[..6], b"before");
            assert_eq!(&built[6..], &written[..], "{len} bytes");
        }
    }

    #[test]
    fn a_well_formed_stream_is_read_whole() {
        let mut bytes = hello();
        bytes.extend(append());
        bytes.extend(append());
        assert_eq!(read_all(&bytes), 2);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            read_all(&bytes);
            let mut after_hello = hello();
            after_hello.extend(&bytes);
            read_all(&after_hello);
        }

        #[test]
        fn damaged_messages_never_panic(
            flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8),
        ) {
            let mut msg = append();
            for (at, mask) in flips {
                let i = 4 + at % (msg.len() - 4);
                msg[i] ^= mask;
            }
            let mut bytes = hello();
            bytes.extend(msg);
            read_all(&bytes);
        }
    }
}
