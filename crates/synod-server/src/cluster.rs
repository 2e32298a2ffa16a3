//! Starting members with their etcd API: a local cluster for `synod up` and
//! for tests.

use crate::backend::MemberBackend;
use crate::member::{Member, MemberConfig};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use synod_etcd::{EtcdServer, Limits, MemberInfo};
use synod_protocols::NodeId;
use tokio::sync::oneshot;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_stream::StreamExt;

/// One member's addresses and data directory. Its raft id is its position in
/// the cluster's list; its etcd member id is that plus one (etcd reserves 0).
#[derive(Clone, Debug)]
pub struct MemberSpec {
    pub name: String,
    pub client: SocketAddr,
    pub peer: SocketAddr,
    pub data_dir: PathBuf,
}

#[derive(Clone, Debug)]
pub struct ClusterSpec {
    pub cluster_id: u64,
    pub members: Vec<MemberSpec>,
    pub tick: Duration,
}

impl ClusterSpec {
    /// `n` members on 127.0.0.1 with data under `dir`; ports from `ports`
    /// as (client, peer) per member.
    pub fn local(dir: PathBuf, ports: &[(u16, u16)]) -> ClusterSpec {
        ClusterSpec {
            cluster_id: 0x5359_4e4f_4400_0001,
            members: ports
                .iter()
                .enumerate()
                .map(|(i, (c, p))| MemberSpec {
                    name: format!("synod-{}", i + 1),
                    client: SocketAddr::from(([127, 0, 0, 1], *c)),
                    peer: SocketAddr::from(([127, 0, 0, 1], *p)),
                    data_dir: dir.join(format!("member-{}", i + 1)),
                })
                .collect(),
            tick: Duration::from_millis(100),
        }
    }

    fn infos(&self) -> Vec<MemberInfo> {
        self.members
            .iter()
            .enumerate()
            .map(|(i, m)| MemberInfo {
                id: i as u64 + 1,
                name: m.name.clone(),
                peer_urls: vec![format!("http://{}", m.peer)],
                client_urls: vec![format!("http://{}", m.client)],
                is_learner: false,
            })
            .collect()
    }
}

/// How long a stopping member lets open client streams finish.
const STOP_GRACE: Duration = Duration::from_millis(500);

/// A member with its API server.
pub struct RunningMember {
    pub raft_id: NodeId,
    member: Member,
    stop_api: Option<oneshot::Sender<()>>,
    api: Option<tokio::task::JoinHandle<()>>,
}

impl RunningMember {
    /// Stops serving clients, then stops the member.
    pub async fn stop(mut self) {
        if let Some(s) = self.stop_api.take() {
            let _ = s.send(());
        }
        if let Some(mut api) = self.api.take() {
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
    let raft_id = index as NodeId;
    let peers: BTreeMap<NodeId, SocketAddr> = spec
        .members
        .iter()
        .enumerate()
        .map(|(i, m)| (i as NodeId, m.peer))
        .collect();
    std::fs::create_dir_all(&m.data_dir)
        .map_err(|e| format!("{}: cannot create: {e}", m.data_dir.display()))?;
    let listener = tokio::net::TcpListener::bind(m.client)
        .await
        .map_err(|e| format!("{}: cannot listen for clients on {}: {e}", m.name, m.client))?;
    let member = Member::start(MemberConfig {
        id: raft_id,
        cluster_id: spec.cluster_id,
        data_dir: m.data_dir.clone(),
        peers,
        tick: spec.tick,
    })?;
    let infos = spec.infos();
    let backend = Arc::new(MemberBackend {
        cluster_id: spec.cluster_id,
        me: infos[index].clone(),
        members: infos,
        inbox: member.inbox.clone(),
        data_dir: m.data_dir.clone(),
    });
    let routes = EtcdServer::new(backend, Limits::default()).router();
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    // Small responses must not wait for the client's delayed ACK (Nagle):
    // without this a read took 40 ms.
    let incoming = TcpListenerStream::new(listener).map(|s| {
        let s = s?;
        s.set_nodelay(true)?;
        Ok::<_, std::io::Error>(s)
    });
    let api = tokio::spawn(async move {
        let _ = tonic::transport::Server::builder()
            .layer(synod_etcd::GrpcGoCompat)
            .add_routes(routes)
            .serve_with_incoming_shutdown(incoming, async {
                let _ = stop_rx.await;
            })
            .await;
    });
    Ok(RunningMember {
        raft_id,
        member,
        stop_api: Some(stop_tx),
        api: Some(api),
    })
}

/// Starts every member of `spec`.
pub async fn start_cluster(spec: &ClusterSpec) -> Result<Vec<RunningMember>, String> {
    let mut running = Vec::new();
    for i in 0..spec.members.len() {
        running.push(start_member(spec, i).await?);
    }
    Ok(running)
}
