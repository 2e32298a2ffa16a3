//! Members talk over TCP: length-prefixed bincode frames of [`PeerMsg`],
//! after a [`Hello`] that says who is speaking.
//!
//! Each peer gets a writer thread that connects lazily and reconnects after a
//! failure; a message that cannot be written is dropped, which Raft tolerates
//! (it retransmits) and which a forwarded request's deadline covers. Each
//! accepted connection gets a reader thread that hands frames to the member.
//! Traffic goes only where the member's configuration says.
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
//! reader's memory grows only with the bytes that arrive.
//!
//! A member joining a running cluster (`--initial-cluster-state existing`)
//! first asks a peer who the cluster is ([`ask_cluster`]): the cluster id
//! and the members with their ids, as etcd asks its peers' `/members`.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::{BufReader, BufWriter, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};
use synod_kv::engine::Stamped;
use synod_kv::replica::{Answer, ReplicaError, Request};
use synod_kv::{Command, Store};
use synod_protocols::multipaxos as mp;
use synod_protocols::raft::{EntryData, Message};
use synod_protocols::NodeId;

use crate::peer_conn::Conn;
pub use crate::peer_conn::PeerTls;

/// The default bound on a frame (`Tuning::max_peer_frame`): a snapshot of
/// a large store, with room to spare. Memory follows the bytes that
/// actually arrive, not the length a header claims, so a lying header costs
/// nothing.
pub const MAX_FRAME: usize = 512 << 20;
/// Messages queued for one peer before more are dropped. The queue's slots
/// (about 90 bytes each) are written when it is made, so its size is memory
/// every member holds per peer; the writer drains it in batches, and Raft
/// keeps at most a few appends in flight per follower.
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
    /// Never on the wire: a reader tells its member that the connection
    /// from this peer ended (a dead process closes all of its connections,
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

/// What a reader thread hands its member.
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
#[derive(Clone)]
pub struct PeerSender {
    tx: mpsc::SyncSender<PeerMsg>,
}

impl PeerSender {
    /// Starts the writer thread for peer `id` at `addr`, which opens every
    /// connection with `hello` and keeps `active` up to date for `id`.
    pub fn start(
        hello: Arc<Hello>,
        id: u64,
        addr: SocketAddr,
        active: ActiveSince,
        tls: Option<Arc<PeerTls>>,
    ) -> PeerSender {
        let (tx, rx) = mpsc::sync_channel::<PeerMsg>(PEER_QUEUE);
        std::thread::Builder::new()
            .name(format!("synod-peer-to-{addr}"))
            .spawn(move || {
                let mut link = Link { id, active };
                writer(&hello.to(id), addr, rx, &mut link, tls.as_deref());
                link.set(false);
            })
            .expect("spawn peer writer");
        PeerSender { tx }
    }

    /// Queues `msg` for the peer; drops it if the queue is full (the peer
    /// is slow or gone): Raft sends again, and a forwarded request's
    /// deadline covers its loss. The member thread never blocks here.
    pub fn send(&self, msg: PeerMsg) {
        let _ = self.tx.try_send(msg);
    }
}

/// How often an idle writer makes sure it is connected: every member says
/// hello to every other soon after it starts (followers send each other
/// nothing else, but each must know the others' client URLs).
const IDLE_CHECK: Duration = Duration::from_secs(1);

fn connect(hello: &Hello, addr: SocketAddr, tls: Option<&PeerTls>) -> Option<BufWriter<Conn>> {
    let s = Conn::dial(addr, Duration::from_millis(200), tls).ok()?;
    let mut w = BufWriter::new(s);
    frame(&mut w, hello).ok()?;
    w.flush().ok()?;
    Some(w)
}

/// Whether the peer has closed `conn` (it restarted, or refused our hello).
/// Peers never write on a connection they accepted: any readable byte or
/// end of stream means it is over.
fn closed(conn: &mut BufWriter<Conn>) -> bool {
    conn.get_mut().closed()
}

/// A writer's record of whether its peer is reachable.
struct Link {
    id: u64,
    active: ActiveSince,
}

impl Link {
    fn set(&mut self, up: bool) {
        let mut map = self.active.lock().unwrap_or_else(|p| p.into_inner());
        if up {
            map.entry(self.id).or_insert_with(Instant::now);
        } else {
            map.remove(&self.id);
        }
    }
}

fn writer(
    hello: &Hello,
    addr: SocketAddr,
    rx: mpsc::Receiver<PeerMsg>,
    link: &mut Link,
    tls: Option<&PeerTls>,
) {
    let mut conn: Option<BufWriter<Conn>> = connect(hello, addr, tls);
    link.set(conn.is_some());
    loop {
        let first = match rx.recv_timeout(IDLE_CHECK) {
            Ok(m) => m,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let open = conn.as_mut().is_some_and(|c| !closed(c));
                if !open {
                    conn = connect(hello, addr, tls);
                    // A reconnect counts from now: the peer was down.
                    link.set(false);
                    link.set(conn.is_some());
                }
                continue;
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
        };
        if conn.is_none() {
            conn = connect(hello, addr, tls);
            link.set(conn.is_some());
        }
        let Some(w) = conn.as_mut() else {
            // Peer down: drop what is queued now rather than let it pile up.
            while rx.try_recv().is_ok() {}
            continue;
        };
        // Batch whatever else is queued into the same flush.
        let mut ok = frame(w, &FrameOut::new(hello, &first)).is_ok();
        while ok {
            match rx.try_recv() {
                Ok(m) => ok = frame(w, &FrameOut::new(hello, &m)).is_ok(),
                Err(_) => break,
            }
        }
        if !ok || w.flush().is_err() {
            conn = None;
            link.set(false);
        }
    }
}

/// Writes `msg` as one frame, or as several of at most [`CHUNK`] bytes.
fn frame(w: &mut impl Write, msg: &impl Serialize) -> std::io::Result<()> {
    let body = bincode::serialize(msg).expect("peer messages serialize");
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

/// Accepts peers on `listener`, handing every frame to `inbox` until the
/// inbox is gone or the returned guard is dropped.
pub fn listen<T: Send + 'static>(
    listener: TcpListener,
    expect: Expect,
    on_hello: OnHello,
    on_join: OnJoin,
    inbox: mpsc::SyncSender<T>,
    wrap: fn(Incoming) -> T,
    tls: Option<Arc<PeerTls>>,
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
                let inbox = inbox.clone();
                let (expect, on_hello) = (expect.clone(), on_hello.clone());
                let on_join = on_join.clone();
                let tls = tls.clone();
                let _ = std::thread::Builder::new()
                    .name("synod-peer-read".into())
                    .spawn(move || {
                        let remote = stream.peer_addr().ok();
                        // The TLS handshake runs here, off the accept thread.
                        match Conn::accept(stream, tls.as_deref()) {
                            Ok(conn) => reader(conn, &expect, &on_hello, &on_join, inbox, wrap),
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
        let header = u32::from_le_bytes(len);
        let n = (header & !MORE) as usize;
        if n > CHUNK || body.len() + n > max {
            return false;
        }
        // Grows with what arrives: a header that promises a megabyte and
        // sends nothing allocates nothing.
        let before = body.len();
        if !matches!(r.take(n as u64).read_to_end(body), Ok(got) if got == n) {
            return false;
        }
        debug_assert_eq!(body.len(), before + n);
        if header & MORE == 0 {
            return true;
        }
    }
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

fn reader<T>(
    stream: Conn,
    expect: &Expect,
    on_hello: &OnHello,
    on_join: &OnJoin,
    inbox: mpsc::SyncSender<T>,
    wrap: fn(Incoming) -> T,
) {
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
    loop {
        if !read_frame(&mut r, &mut body, expect.max_frame) {
            let _ = inbox.send(wrap((from, PeerMsg::Closed)));
            return;
        }
        // A frame that does not decode ends the connection: the peer speaks
        // something else, or the stream is out of step.
        let Some(FrameIn {
            cluster_id,
            version,
            from: sender,
            msg,
        }) = decode::<FrameIn>(&body)
        else {
            refused(remote, "it sent a frame that is not a peer message");
            return;
        };
        if (cluster_id, version, sender) != (hello.cluster_id, hello.version, from) {
            refused(
                remote,
                &format!(
                    "a frame names cluster {cluster_id:x}, version {version}, member {sender}, \
                     not what its hello said"
                ),
            );
            return;
        }
        if let Err(why) = msg.check() {
            refused(remote, &format!("it sent a malformed message: {why}"));
            return;
        }
        if inbox.send(wrap((from, msg))).is_err() {
            return;
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
