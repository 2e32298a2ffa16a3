//! Members talk over TCP: length-prefixed bincode frames of [`PeerMsg`].
//!
//! Each peer gets a writer thread that connects lazily and reconnects after a
//! failure; a message that cannot be written is dropped, which Raft tolerates
//! (it retransmits) and which a forwarded request's deadline covers. Each
//! accepted connection gets a reader thread that hands frames to the member.
//! Traffic goes only where the member's configuration says.

use serde::{Deserialize, Serialize};
use std::io::{BufReader, BufWriter, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;
use synod_kv::replica::{Answer, ReplicaError, Request};
use synod_protocols::raft::Message;
use synod_protocols::NodeId;

/// Largest frame accepted: a snapshot of a large store, with room to spare.
const MAX_FRAME: usize = 512 << 20;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum PeerMsg {
    Raft(Message),
    /// A follower passes a client's request to the leader.
    Forward {
        id: u64,
        req: Request,
    },
    /// The leader's answer to a forwarded request.
    Reply {
        id: u64,
        result: Result<Answer, ReplicaError>,
    },
}

/// What a reader thread hands its member.
pub type Incoming = (NodeId, PeerMsg);

/// Sends to one peer; cheap to clone.
#[derive(Clone)]
pub struct PeerSender {
    tx: mpsc::Sender<PeerMsg>,
}

impl PeerSender {
    /// Starts the writer thread for the peer at `addr`; `me` is our id.
    pub fn start(me: NodeId, addr: SocketAddr) -> PeerSender {
        let (tx, rx) = mpsc::channel::<PeerMsg>();
        std::thread::Builder::new()
            .name(format!("synod-peer-{me}-to-{addr}"))
            .spawn(move || writer(me, addr, rx))
            .expect("spawn peer writer");
        PeerSender { tx }
    }

    pub fn send(&self, msg: PeerMsg) {
        // The writer only stops when the member is gone.
        let _ = self.tx.send(msg);
    }
}

fn writer(me: NodeId, addr: SocketAddr, rx: mpsc::Receiver<PeerMsg>) {
    let mut conn: Option<BufWriter<TcpStream>> = None;
    while let Ok(first) = rx.recv() {
        if conn.is_none() {
            conn = TcpStream::connect_timeout(&addr, Duration::from_millis(200))
                .ok()
                .map(|s| {
                    let _ = s.set_nodelay(true);
                    BufWriter::new(s)
                });
        }
        let Some(w) = conn.as_mut() else {
            // Peer down: drop what is queued now rather than let it pile up.
            while rx.try_recv().is_ok() {}
            continue;
        };
        // Batch whatever else is queued into the same flush.
        let mut ok = frame(w, me, &first).is_ok();
        while ok {
            match rx.try_recv() {
                Ok(m) => ok = frame(w, me, &m).is_ok(),
                Err(_) => break,
            }
        }
        if !ok || w.flush().is_err() {
            conn = None;
        }
    }
}

fn frame(w: &mut impl Write, me: NodeId, msg: &PeerMsg) -> std::io::Result<()> {
    let body = bincode::serialize(&(me, msg)).expect("peer messages serialize");
    w.write_all(&(body.len() as u32).to_le_bytes())?;
    w.write_all(&body)
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
    inbox: mpsc::Sender<T>,
    wrap: fn(Incoming) -> T,
) -> std::io::Result<Listening> {
    let addr = listener.local_addr()?;
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    std::thread::Builder::new()
        .name("synod-peer-accept".into())
        .spawn(move || {
            for stream in listener.incoming() {
                if flag.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(stream) = stream else { continue };
                let inbox = inbox.clone();
                let _ = std::thread::Builder::new()
                    .name("synod-peer-read".into())
                    .spawn(move || reader(stream, inbox, wrap));
            }
        })?;
    Ok(Listening { addr, stop })
}

fn reader<T>(stream: TcpStream, inbox: mpsc::Sender<T>, wrap: fn(Incoming) -> T) {
    let mut r = BufReader::new(stream);
    let mut len = [0u8; 4];
    let mut body = Vec::new();
    loop {
        if r.read_exact(&mut len).is_err() {
            return;
        }
        let n = u32::from_le_bytes(len) as usize;
        if n > MAX_FRAME {
            return;
        }
        body.resize(n, 0);
        if r.read_exact(&mut body).is_err() {
            return;
        }
        // A frame that does not decode ends the connection: the peer speaks
        // something else, or the stream is out of step.
        let Ok(msg) = bincode::deserialize::<Incoming>(&body) else {
            return;
        };
        if inbox.send(wrap(msg)).is_err() {
            return;
        }
    }
}
