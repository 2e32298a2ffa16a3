//! Starting members with their etcd API: one member per process for
//! `synod serve`, or a whole local cluster in one process for tests.

use crate::backend::MemberBackend;
use crate::engines::EngineChoice;
use crate::grpc_metrics::GrpcMetrics;
use crate::http;
use crate::ids;
use crate::member::{Member, MemberConfig};
use crate::metrics::Metrics;
use crate::peer::OnHello;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use synod_etcd::{EtcdServer, Limits, MemberInfo};
use synod_kv::engine::{MultiPaxosEngine, RaftEngine};
use synod_protocols::NodeId;
use tokio::sync::watch;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_stream::{Stream, StreamExt};

/// One member of the initial cluster. Its raft id is its etcd member id,
/// as in etcd; [`ClusterSpec::members`] is sorted by it.
#[derive(Clone, Debug)]
pub struct MemberSpec {
    pub name: String,
    /// etcd's member id (see [`ids::member_id`]).
    pub member_id: u64,
    /// Where clients reach it (the first advertised client URL); for the
    /// in-process cluster also where it listens.
    pub client: SocketAddr,
    /// Advertised client URLs (empty for the other members of a `synod
    /// serve` process until they say hello).
    pub client_urls: Vec<String>,
    /// Where peers reach it (its first peer URL, resolved).
    pub peer: SocketAddr,
    pub peer_urls: Vec<String>,
    pub data_dir: PathBuf,
}

/// Timing and limits, the same on every member.
/// `--snapshot-log-percent`'s default: a snapshot waits until the commands
/// applied since the last one are as large as it (see [`Tuning`]).
pub const DEFAULT_SNAPSHOT_LOG_PERCENT: u64 = 100;

#[derive(Clone, Debug)]
pub struct Tuning {
    /// `--heartbeat-interval`: one tick.
    pub tick: Duration,
    /// `--election-timeout`.
    pub election: Duration,
    /// `--snapshot-count`.
    pub snapshot_every: u64,
    /// `--snapshot-log-percent`.
    pub snapshot_log_percent: u64,
    pub limits: Limits,
    /// The largest peer message a member takes (a snapshot of the whole
    /// store is one); a peer that sends more is disconnected.
    pub max_peer_frame: usize,
    /// `--quota-backend-bytes` (0: no quota).
    pub quota_bytes: u64,
    /// `--auto-compaction-mode` and `--auto-compaction-retention`.
    pub auto_compaction: Option<crate::compactor::AutoCompaction>,
    /// `--strict-reconfig-check`.
    pub strict_reconfig: bool,
    /// `--engine`: the consensus engine under the store.
    pub engine: EngineChoice,
    /// Deliberate bugs in every member (`--unsafe-bug`; tests of `synod
    /// chaos` only, and only with the `broken` feature).
    pub bugs: synod_kv::replica::ReplicaBugs,
    /// The same, in the etcd API layer.
    pub api_bugs: synod_etcd::ApiBugs,
    /// `--auth-token jwt,...`: the keys of JWT auth tokens (else simple
    /// tokens).
    pub jwt: Option<Arc<synod_etcd::JwtKeys>>,
    /// `--pre-vote`: a follower asks whether it could win before it starts
    /// an election (on by default in synod; etcd 3.4's default is off).
    pub pre_vote: bool,
    /// The client listeners' HTTP/2 settings.
    pub grpc: GrpcTuning,
    /// `--cors`: the origins the HTTP answers allow.
    pub cors: synod_etcd::Cors,
    /// `--host-whitelist`: the Host names plain HTTP requests may carry.
    pub host_whitelist: synod_etcd::HostWhitelist,
}

/// etcd's gRPC server settings for the client listeners.
#[derive(Clone, Copy, Debug, Default)]
pub struct GrpcTuning {
    /// `--max-concurrent-streams` (`None`: no limit).
    pub max_concurrent_streams: Option<u32>,
    /// `--grpc-keepalive-interval`: how long a connection may be idle
    /// before the server pings it.
    pub keepalive_interval: Option<Duration>,
    /// `--grpc-keepalive-timeout`: how long the server waits for the ping's
    /// answer before it closes the connection.
    pub keepalive_timeout: Option<Duration>,
    /// `--metrics=extensive`: every call's handling time, by method.
    pub handling_times: bool,
}

impl Default for Tuning {
    fn default() -> Self {
        Tuning {
            tick: Duration::from_millis(100),
            election: Duration::from_millis(1000),
            snapshot_every: 1000,
            snapshot_log_percent: DEFAULT_SNAPSHOT_LOG_PERCENT,
            limits: Limits::default(),
            max_peer_frame: crate::peer::MAX_FRAME,
            quota_bytes: 2 << 30,
            auto_compaction: None,
            strict_reconfig: true,
            engine: EngineChoice::Raft,
            bugs: Default::default(),
            api_bugs: Default::default(),
            jwt: None,
            pre_vote: true,
            grpc: GrpcTuning::default(),
            cors: synod_etcd::Cors::default(),
            host_whitelist: synod_etcd::HostWhitelist::default(),
        }
    }
}

#[derive(Clone, Debug)]
pub struct ClusterSpec {
    pub cluster_id: u64,
    pub members: Vec<MemberSpec>,
    pub tuning: Tuning,
    /// The members join a running cluster (`--initial-cluster-state
    /// existing`): they start with no voters of their own and wait for the
    /// leader, and `members` only says where the others are.
    pub joining: bool,
}

impl ClusterSpec {
    /// A cluster of `members` (any order), its ids derived from their peer
    /// URLs and `token` as etcd derives them.
    pub fn new(token: &str, mut members: Vec<MemberSpec>, tuning: Tuning) -> ClusterSpec {
        for m in &mut members {
            m.member_id = ids::member_id(&m.peer_urls, token);
        }
        members.sort_by_key(|m| m.member_id);
        let cluster_id = ids::cluster_id(&members.iter().map(|m| m.member_id).collect::<Vec<_>>());
        ClusterSpec {
            cluster_id,
            members,
            tuning,
            joining: false,
        }
    }

    /// `n` members on 127.0.0.1 with data under `dir`; ports from `ports`
    /// as (client, peer) per member. The cluster token is made from `dir`, so
    /// two such clusters never share a cluster id.
    pub fn local(dir: PathBuf, ports: &[(u16, u16)]) -> ClusterSpec {
        let members = ports
            .iter()
            .enumerate()
            .map(|(i, (c, p))| MemberSpec {
                name: format!("synod-{}", i + 1),
                member_id: 0,
                client: SocketAddr::from(([127, 0, 0, 1], *c)),
                client_urls: vec![format!("http://127.0.0.1:{c}")],
                peer: SocketAddr::from(([127, 0, 0, 1], *p)),
                peer_urls: vec![format!("http://127.0.0.1:{p}")],
                data_dir: dir.join(format!("member-{}", i + 1)),
            })
            .collect();
        let token = format!("synod-local:{}", dir.display());
        ClusterSpec::new(&token, members, Tuning::default())
    }

    /// The index (raft id) of the member called `name`.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.members.iter().position(|m| m.name == name)
    }

    fn infos(&self) -> Vec<MemberInfo> {
        self.members
            .iter()
            .map(|m| MemberInfo {
                id: m.member_id,
                name: m.name.clone(),
                peer_urls: m.peer_urls.clone(),
                client_urls: m.client_urls.clone(),
                is_learner: false,
            })
            .collect()
    }
}

/// Where one member listens; by default where the spec says others reach it.
#[derive(Clone, Debug)]
pub struct Listen {
    pub clients: Vec<SocketAddr>,
    /// `https://` client URLs: served over TLS with `client_tls`.
    pub secure_clients: Vec<SocketAddr>,
    pub client_tls: Option<Arc<rustls::ServerConfig>>,
    pub peer: SocketAddr,
    /// TLS with the peers, for `https://` peer URLs.
    pub peer_tls: Option<Arc<crate::peer::PeerTls>>,
    /// `--listen-metrics-urls`: HTTP only (/metrics, /health, /version).
    pub metrics: Vec<SocketAddr>,
}

/// The longest a stopping member waits for its leadership to move (the
/// member itself gives up after an election timeout).
const HANDOFF_LIMIT: Duration = Duration::from_secs(5);

/// How long a stopping member lets open client streams finish.
const STOP_GRACE: Duration = Duration::from_millis(500);

/// A member with its API server.
pub struct RunningMember {
    pub raft_id: NodeId,
    member: Member,
    stop_api: watch::Sender<bool>,
    apis: Vec<tokio::task::JoinHandle<()>>,
}

impl RunningMember {
    /// Resolves with the reason when the member stops by itself (removed
    /// from the cluster, storage failed); never while it runs.
    pub async fn ended(&self) -> String {
        let mut ended = self.member.ended.clone();
        let why = match ended.wait_for(|e| e.is_some()).await {
            Ok(e) => e.clone(),
            Err(_) => None,
        };
        match why {
            Some(why) => why,
            None => std::future::pending().await,
        }
    }

    /// Hands leadership away if this member leads (as etcd does on a planned
    /// stop, so the others elect no one and clients barely notice), stops
    /// serving clients, then stops the member.
    pub async fn stop(mut self) {
        let _ = tokio::time::timeout(HANDOFF_LIMIT, self.member.handoff(None)).await;
        let _ = self.stop_api.send(true);
        for mut api in std::mem::take(&mut self.apis) {
            // A graceful shutdown waits for every open stream (a Lock that is
            // queued, an Observe, a watch) to end, which a client may never
            // do: give them a moment, then drop the connections.
            if tokio::time::timeout(STOP_GRACE, &mut api).await.is_err() {
                api.abort();
                let _ = api.await;
            }
        }
        self.member.stop();
    }
}

/// Starts member `index` of `spec` (recovering it from its data directory)
/// and its etcd API on its client address.
pub async fn start_member(spec: &ClusterSpec, index: usize) -> Result<RunningMember, String> {
    let m = &spec.members[index];
    let listen = Listen {
        clients: vec![m.client],
        secure_clients: Vec::new(),
        client_tls: None,
        peer: m.peer,
        peer_tls: None,
        metrics: Vec::new(),
    };
    start_member_on(spec, index, &listen).await
}

/// Starts member `index` of `spec`, listening where `listen` says.
pub async fn start_member_on(
    spec: &ClusterSpec,
    index: usize,
    listen: &Listen,
) -> Result<RunningMember, String> {
    let m = &spec.members[index];
    let raft_id = m.member_id;
    std::fs::create_dir_all(&m.data_dir)
        .map_err(|e| format!("{}: cannot create: {e}", m.data_dir.display()))?;
    // The client ports are taken first (a port in use fails before any data
    // is touched) but listened on only once the member has recovered: a
    // client, or `synod up`, that can connect finds a member that serves.
    let cannot = |addr: &SocketAddr, e: std::io::Error| {
        format!(
            "member {}: cannot listen for clients on {addr}: {e}",
            m.name
        )
    };
    if !listen.secure_clients.is_empty() && listen.client_tls.is_none() {
        return Err(format!(
            "member {}: https client URLs need a certificate (--cert-file and --key-file, or --auto-tls)",
            m.name
        ));
    }
    let mut sockets = Vec::new();
    let metrics_from = listen.clients.len() + listen.secure_clients.len();
    let secure_from = listen.clients.len();
    let all = listen.clients.iter().chain(&listen.secure_clients);
    for addr in all.chain(&listen.metrics) {
        let socket = if addr.is_ipv4() {
            tokio::net::TcpSocket::new_v4()
        } else {
            tokio::net::TcpSocket::new_v6()
        }
        .map_err(|e| cannot(addr, e))?;
        socket.set_reuseaddr(true).map_err(|e| cannot(addr, e))?;
        socket.bind(*addr).map_err(|e| cannot(addr, e))?;
        sockets.push((*addr, socket));
    }
    let tuning = &spec.tuning;
    let infos = spec.infos();
    // Names and client URLs reach the others through the log (each member
    // publishes its own), not through hellos.
    let on_hello: OnHello = Arc::new(|_| {});
    let metrics = Metrics::new();
    metrics.describe(raft_id, Some(tuning.quota_bytes).filter(|&q| q > 0));
    if tuning.grpc.handling_times {
        metrics.time_grpc_handling();
    }
    let voters = if spec.joining {
        Vec::new()
    } else {
        infos.iter().map(|i| i.id).collect()
    };
    let member_cfg = MemberConfig {
        id: raft_id,
        cluster_id: spec.cluster_id,
        name: m.name.clone(),
        client_urls: m.client_urls.clone(),
        data_dir: m.data_dir.clone(),
        initial: infos.clone(),
        voters,
        listen_peer: listen.peer,
        peer_tls: listen.peer_tls.clone(),
        tick: tuning.tick,
        election_ticks: election_ticks(tuning),
        snapshot_every: tuning.snapshot_every,
        snapshot_log_percent: tuning.snapshot_log_percent,
        max_txn_ops: tuning.limits.max_txn_ops,
        max_peer_frame: tuning.max_peer_frame,
        quota_bytes: tuning.quota_bytes,
        auto_compaction: tuning.auto_compaction,
        pre_vote: tuning.pre_vote,
        bugs: tuning.bugs,
    };
    let member = match tuning.engine {
        EngineChoice::Raft => Member::start::<RaftEngine>(member_cfg, on_hello, metrics.clone()),
        EngineChoice::MultiPaxos => {
            Member::start::<MultiPaxosEngine>(member_cfg, on_hello, metrics.clone())
        }
    }?;
    let backend = Arc::new(MemberBackend {
        cluster_id: spec.cluster_id,
        me: infos[index].clone(),
        members: member.directory.clone(),
        auth: member.auth.clone(),
        inbox: member.inbox.clone(),
        data_dir: m.data_dir.clone(),
        strict_reconfig: tuning.strict_reconfig,
        active: member.active.clone(),
        stages: metrics.stages.clone(),
    });
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut apis = Vec::new();
    let mut listeners = Vec::new();
    for (addr, socket) in sockets {
        listeners.push(socket.listen(1024).map_err(|e| cannot(&addr, e))?);
    }
    let lease_ids = Arc::new(synod_etcd::LeaseIds::starting_now());
    for (i, listener) in listeners.into_iter().enumerate() {
        let web = tuning
            .cors
            .apply(http::routes(backend.clone(), metrics.clone()));
        let routes = if i < metrics_from {
            let mut api = EtcdServer::new(backend.clone(), tuning.limits)
                .with_bugs(tuning.api_bugs)
                .with_cors(tuning.cors.clone())
                .with_watch_gauges(metrics.watch.clone())
                .with_lease_ids(lease_ids.clone());
            if let Some(keys) = &tuning.jwt {
                api = api.with_jwt(keys.clone());
            }
            let grpc = api.router();
            let all = grpc.into_axum_router().merge(web);
            // Checked on plain client listeners only, as etcd checks.
            tonic::service::Routes::from(match i < secure_from {
                true => tuning.host_whitelist.apply(all),
                false => all,
            })
        } else {
            tonic::service::Routes::from(web)
        };
        let api = Api {
            routes,
            metrics: metrics.clone(),
            grpc: tuning.grpc,
            stop: stop_rx.clone(),
        };
        let tls = listen
            .client_tls
            .clone()
            .filter(|_| (secure_from..metrics_from).contains(&i));
        apis.push(match tls {
            Some(cfg) => tokio::spawn(api.serve(tls_incoming(listener, cfg))),
            None => tokio::spawn(api.serve(plain_incoming(listener))),
        });
    }
    Ok(RunningMember {
        raft_id,
        member,
        stop_api: stop_tx,
        apis,
    })
}

/// One listener's HTTP/2 (and HTTP/1.1) server.
struct Api {
    routes: tonic::service::Routes,
    metrics: Arc<Metrics>,
    grpc: GrpcTuning,
    stop: watch::Receiver<bool>,
}

impl Api {
    async fn serve<IO>(mut self, incoming: impl Stream<Item = std::io::Result<IO>> + Send + 'static)
    where
        IO: tokio::io::AsyncRead
            + tokio::io::AsyncWrite
            + tonic::transport::server::Connected
            + Unpin
            + Send
            + 'static,
    {
        // HTTP/1.1 too, for /health, /version and /metrics.
        let _ = tonic::transport::Server::builder()
            .max_concurrent_streams(self.grpc.max_concurrent_streams)
            .http2_keepalive_interval(self.grpc.keepalive_interval)
            .http2_keepalive_timeout(self.grpc.keepalive_timeout)
            .accept_http1(true)
            .layer(GrpcMetrics(self.metrics.grpc.clone()))
            .layer(synod_etcd::GrpcGoCompat)
            .add_routes(self.routes)
            .serve_with_incoming_shutdown(incoming, async move {
                let _ = self.stop.wait_for(|s| *s).await;
            })
            .await;
    }
}

/// Plain connections. Small responses must not wait for the client's
/// delayed ACK (Nagle): without `nodelay` a read took 40 ms. AuthorityFix
/// lets etcdctl's `http://host:port` authority through (see its docs).
fn plain_incoming(
    listener: tokio::net::TcpListener,
) -> impl Stream<Item = std::io::Result<synod_etcd::AuthorityFix<tokio::net::TcpStream>>> {
    TcpListenerStream::new(listener).map(|s| {
        let s = s?;
        s.set_nodelay(true)?;
        Ok(synod_etcd::AuthorityFix::new(s))
    })
}

/// How long a client may take over its TLS handshake.
const HANDSHAKE_LIMIT: Duration = Duration::from_secs(10);

type TlsConn = synod_etcd::AuthorityFix<tokio_rustls::server::TlsStream<tokio::net::TcpStream>>;

/// TLS connections, each handshake on its own task so that a slow or
/// silent client holds up no other. A failed handshake (no or a wrong
/// client certificate) ends that connection only.
fn tls_incoming(
    listener: tokio::net::TcpListener,
    cfg: Arc<rustls::ServerConfig>,
) -> impl Stream<Item = std::io::Result<TlsConn>> {
    let acceptor = tokio_rustls::TlsAcceptor::from(cfg);
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                a = listener.accept() => a,
                // The server stopped and dropped its end.
                () = tx.closed() => return,
            };
            let Ok((socket, from)) = accepted else {
                continue;
            };
            let _ = socket.set_nodelay(true);
            let (acceptor, tx) = (acceptor.clone(), tx.clone());
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_LIMIT, acceptor.accept(socket)).await {
                    Ok(Ok(tls)) => {
                        let _ = tx.send(Ok(synod_etcd::AuthorityFix::new(tls))).await;
                    }
                    // Said as etcd says it: an operator looking for why a
                    // client cannot connect finds it at the default level.
                    Ok(Err(e)) => tracing::info!("rejected connection from {from}: {e}"),
                    Err(_) => tracing::debug!("TLS handshake with {from} timed out"),
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// Election timeout in ticks, as etcd counts it.
fn election_ticks(t: &Tuning) -> u32 {
    let ticks = t.election.as_millis() / t.tick.as_millis().max(1);
    u32::try_from(ticks).unwrap_or(u32::MAX).max(1)
}

/// Starts every member of `spec`.
pub async fn start_cluster(spec: &ClusterSpec) -> Result<Vec<RunningMember>, String> {
    let mut running = Vec::new();
    for i in 0..spec.members.len() {
        running.push(start_member(spec, i).await?);
    }
    Ok(running)
}

/// A loopback port nobody listens on, for a member started on this machine
/// (tests, `synod chaos`).
///
/// Taken below the kernel's ephemeral range (32768 and up on Linux): a port
/// the kernel hands out for `bind(0)` may meanwhile become the local end of
/// an outgoing connection, and the member's bind then fails. Counted per
/// process from a base that depends on its id, so callers in one process
/// never pick the same one and concurrent processes rarely do.
pub fn free_loopback_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let base = (std::process::id() % 100) * 200;
    loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        // 10000..32000: below the ephemeral range.
        let port = (10_000 + (base + n) % 22_000) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}
