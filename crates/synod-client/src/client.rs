//! Endpoints with failover, and the calls the examples and applications use.

use crate::txn::Txn;
use pb::kv_client::KvClient;
use pb::lease_client::LeaseClient;
use pb::watch_client::WatchClient;
use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use synod_etcd::pb::etcdserverpb as pb;
use synod_etcd::pb::mvccpb;
use synod_etcd::pb::v3electionpb as epb;
use synod_etcd::pb::v3lockpb as lpb;
use synod_etcd::prefix_end;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::{Code, Status};

/// What a call failed with: the server's status (code and etcd's message),
/// or a bad endpoint.
#[derive(Clone, Debug)]
pub enum Error {
    Status(Status),
    Endpoint(String),
    /// The server answered something this client cannot read.
    Protocol(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Status(s) => write!(f, "{:?}: {}", s.code(), s.message()),
            Error::Endpoint(e) => write!(f, "bad endpoint: {e}"),
            Error::Protocol(e) => write!(f, "unexpected answer: {e}"),
        }
    }
}

impl std::error::Error for Error {}

impl From<Status> for Error {
    fn from(s: Status) -> Error {
        Error::Status(s)
    }
}

impl Error {
    /// The gRPC code, if the server answered.
    pub fn code(&self) -> Option<Code> {
        match self {
            Error::Status(s) => Some(s.code()),
            _ => None,
        }
    }
}

/// A connection to a cluster: one lazily connected channel per endpoint and
/// the one currently in use.
#[derive(Clone)]
pub struct Client {
    channels: Arc<Vec<Channel>>,
    current: Arc<AtomicUsize>,
}

/// Whether trying another endpoint may help: the endpoint is down or has no
/// leader, not the request being wrong.
fn endpoint_trouble(s: &Status) -> bool {
    matches!(
        s.code(),
        Code::Unavailable | Code::Unknown | Code::DeadlineExceeded
    ) && !s
        .message()
        .starts_with("etcdserver: requested lease not found")
}

impl Client {
    /// Endpoints as `host:port` or `http://host:port`. Connections are made
    /// on first use, so a cluster still starting is not an error here.
    pub fn connect<S: AsRef<str>>(endpoints: &[S]) -> Result<Client, Error> {
        if endpoints.is_empty() {
            return Err(Error::Endpoint("no endpoints given".into()));
        }
        let channels = endpoints
            .iter()
            .map(|e| {
                let e = e.as_ref();
                let url = if e.contains("://") {
                    e.to_string()
                } else {
                    format!("http://{e}")
                };
                Channel::from_shared(url.clone())
                    .map(|c| c.connect_timeout(Duration::from_secs(2)).connect_lazy())
                    .map_err(|err| Error::Endpoint(format!("{url}: {err}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Client {
            channels: Arc::new(channels),
            current: Arc::new(AtomicUsize::new(0)),
        })
    }

    /// The channel in use.
    pub fn channel(&self) -> Channel {
        let i = self.current.load(Ordering::Relaxed) % self.channels.len();
        self.channels[i].clone()
    }

    fn fail_over(&self, from: usize) {
        let _ = self.current.compare_exchange(
            from,
            (from + 1) % self.channels.len(),
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
    }

    /// Runs a call that is safe to repeat, moving through the endpoints
    /// (twice round, with a short pause per round) while they are down.
    async fn idempotent<T, F, Fut>(&self, mut call: F) -> Result<T, Error>
    where
        F: FnMut(Channel) -> Fut,
        Fut: std::future::Future<Output = Result<T, Status>>,
    {
        let mut last = None;
        for attempt in 0..2 * self.channels.len() {
            let i = self.current.load(Ordering::Relaxed) % self.channels.len();
            match call(self.channels[i].clone()).await {
                Ok(v) => return Ok(v),
                Err(s) if endpoint_trouble(&s) => {
                    self.fail_over(i);
                    last = Some(s);
                    if (attempt + 1) % self.channels.len() == 0 {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
                Err(s) => return Err(s.into()),
            }
        }
        Err(last.expect("at least one attempt").into())
    }

    /// Runs a write once; on an unreachable endpoint the next call uses the
    /// next one. The caller decides whether repeating the write is safe.
    async fn once<T, F, Fut>(&self, call: F) -> Result<T, Error>
    where
        F: FnOnce(Channel) -> Fut,
        Fut: std::future::Future<Output = Result<T, Status>>,
    {
        let i = self.current.load(Ordering::Relaxed) % self.channels.len();
        call(self.channels[i].clone()).await.map_err(|s| {
            if endpoint_trouble(&s) {
                self.fail_over(i);
            }
            s.into()
        })
    }

    /// The key's current value, linearizably.
    pub async fn get(&self, key: impl AsRef<[u8]>) -> Result<Option<mvccpb::KeyValue>, Error> {
        let key = key.as_ref().to_vec();
        let r = self
            .idempotent(|ch| {
                let key = key.clone();
                async move {
                    KvClient::new(ch)
                        .range(pb::RangeRequest {
                            key,
                            ..Default::default()
                        })
                        .await
                }
            })
            .await?
            .into_inner();
        Ok(r.kvs.into_iter().next())
    }

    /// Every key under `prefix`, in key order, with the revision read at.
    pub async fn get_prefix(
        &self,
        prefix: impl AsRef<[u8]>,
    ) -> Result<(i64, Vec<mvccpb::KeyValue>), Error> {
        let key = prefix.as_ref().to_vec();
        let range_end = prefix_end(&key);
        let r = self
            .idempotent(|ch| {
                let (key, range_end) = (key.clone(), range_end.clone());
                async move {
                    KvClient::new(ch)
                        .range(pb::RangeRequest {
                            key,
                            range_end,
                            ..Default::default()
                        })
                        .await
                }
            })
            .await?
            .into_inner();
        Ok((r.header.map_or(0, |h| h.revision), r.kvs))
    }

    /// Writes `value` under `key`; returns the revision of the write.
    pub async fn put(
        &self,
        key: impl Into<Vec<u8>>,
        value: impl Into<Vec<u8>>,
    ) -> Result<i64, Error> {
        self.put_with_lease(key, value, 0).await
    }

    /// Writes `value` under `key`, attached to `lease` (0: none).
    pub async fn put_with_lease(
        &self,
        key: impl Into<Vec<u8>>,
        value: impl Into<Vec<u8>>,
        lease: i64,
    ) -> Result<i64, Error> {
        let req = pb::PutRequest {
            key: key.into(),
            value: value.into(),
            lease,
            ..Default::default()
        };
        let r = self
            .once(|ch| async move { KvClient::new(ch).put(req).await })
            .await?;
        Ok(r.into_inner().header.map_or(0, |h| h.revision))
    }

    /// Applies a transaction.
    pub async fn txn(&self, txn: Txn) -> Result<pb::TxnResponse, Error> {
        let r = self
            .once(|ch| async move { KvClient::new(ch).txn(txn.req).await })
            .await?;
        Ok(r.into_inner())
    }

    /// Grants a lease of `ttl` seconds; returns its id and granted TTL.
    pub async fn grant(&self, ttl: i64) -> Result<(i64, i64), Error> {
        let r = self
            .idempotent(|ch| async move {
                LeaseClient::new(ch)
                    .lease_grant(pb::LeaseGrantRequest { ttl, id: 0 })
                    .await
            })
            .await?
            .into_inner();
        Ok((r.id, r.ttl))
    }

    /// Revokes a lease, deleting its keys.
    pub async fn revoke(&self, id: i64) -> Result<(), Error> {
        self.idempotent(|ch| async move {
            LeaseClient::new(ch)
                .lease_revoke(pb::LeaseRevokeRequest { id })
                .await
        })
        .await?;
        Ok(())
    }

    /// Keeps `lease` alive (a keep-alive every third of its TTL) until the
    /// returned handle is dropped or the lease is gone.
    pub fn keep_alive(&self, lease: i64, ttl: i64) -> KeepAlive {
        let client = self.clone();
        let period = Duration::from_millis((ttl.max(1) as u64 * 1000) / 3);
        let task = tokio::spawn(async move {
            loop {
                let (tx, rx) = mpsc::channel(1);
                let _ = tx.send(pb::LeaseKeepAliveRequest { id: lease }).await;
                let r = LeaseClient::new(client.channel())
                    .lease_keep_alive(ReceiverStream::new(rx))
                    .await;
                match r {
                    Ok(resp) => {
                        let mut s = resp.into_inner();
                        if let Ok(Some(a)) = s.message().await {
                            if a.ttl <= 0 {
                                return; // the lease is gone: nothing to keep
                            }
                        }
                    }
                    Err(_) => client.fail_over(client.current.load(Ordering::Relaxed)),
                }
                tokio::time::sleep(period).await;
            }
        });
        KeepAlive { task }
    }

    /// Waits for the lock `name` (etcd's Lock service), held under `lease`:
    /// returns the guard with the lock's key and its fencing token, the
    /// key's create revision, which only grows from holder to holder.
    pub async fn lock(&self, name: impl Into<Vec<u8>>, lease: i64) -> Result<LockGuard, Error> {
        let req = lpb::LockRequest {
            name: name.into(),
            lease,
        };
        let r = self
            .once(|ch| async move { lpb::lock_client::LockClient::new(ch).lock(req).await })
            .await?
            .into_inner();
        let key = r.key;
        let token = self
            .get(&key)
            .await?
            .map(|kv| kv.create_revision)
            .ok_or_else(|| Error::Protocol("the lock's key vanished: its lease expired".into()))?;
        Ok(LockGuard { key, token })
    }

    /// Releases a lock.
    pub async fn unlock(&self, guard: &LockGuard) -> Result<(), Error> {
        let req = lpb::UnlockRequest {
            key: guard.key.clone(),
        };
        self.idempotent(|ch| {
            let req = req.clone();
            async move { lpb::lock_client::LockClient::new(ch).unlock(req).await }
        })
        .await?;
        Ok(())
    }

    /// Campaigns in election `name` with `value` under `lease`, waiting until
    /// elected; returns the leader key that proclaims and resigns.
    pub async fn campaign(
        &self,
        name: impl Into<Vec<u8>>,
        lease: i64,
        value: impl Into<Vec<u8>>,
    ) -> Result<epb::LeaderKey, Error> {
        let req = epb::CampaignRequest {
            name: name.into(),
            lease,
            value: value.into(),
        };
        let r = self
            .once(|ch| async move {
                epb::election_client::ElectionClient::new(ch)
                    .campaign(req)
                    .await
            })
            .await?
            .into_inner();
        r.leader
            .ok_or_else(|| Error::Protocol("campaign answered without a leader key".into()))
    }

    /// The current leader's value in election `name`, if there is a leader.
    pub async fn leader(&self, name: impl Into<Vec<u8>>) -> Result<Option<Vec<u8>>, Error> {
        let name = name.into();
        let r = self
            .idempotent(|ch| {
                let name = name.clone();
                async move {
                    epb::election_client::ElectionClient::new(ch)
                        .leader(epb::LeaderRequest { name })
                        .await
                }
            })
            .await;
        match r {
            Ok(r) => Ok(r.into_inner().kv.map(|kv| kv.value)),
            Err(Error::Status(s)) if s.message() == "election: no leader" => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Follows election `name`: the current leader's value, then every
    /// change (a new value proclaimed, a new leader), until the receiver is
    /// dropped or the stream breaks.
    pub fn observe(&self, name: impl Into<Vec<u8>>) -> mpsc::Receiver<Vec<u8>> {
        let (out, rx) = mpsc::channel(16);
        let (client, name) = (self.clone(), name.into());
        tokio::spawn(async move {
            let stream = epb::election_client::ElectionClient::new(client.channel())
                .observe(epb::LeaderRequest { name })
                .await;
            let Ok(stream) = stream else { return };
            let mut stream = stream.into_inner();
            while let Ok(Some(r)) = stream.message().await {
                if out
                    .send(r.kv.map(|kv| kv.value).unwrap_or_default())
                    .await
                    .is_err()
                {
                    return;
                }
            }
        });
        rx
    }

    /// Gives up leadership.
    pub async fn resign(&self, leader: epb::LeaderKey) -> Result<(), Error> {
        let req = epb::ResignRequest {
            leader: Some(leader),
        };
        self.once(|ch| async move {
            epb::election_client::ElectionClient::new(ch)
                .resign(req)
                .await
        })
        .await?;
        Ok(())
    }

    /// Watches `key` from revision `from` (0: from now): the changes arrive
    /// on the returned receiver; the watch ends when it is dropped. After a
    /// broken stream it resumes on the next endpoint from the revision after
    /// the last one it delivered, so nothing is missed or repeated.
    pub fn watch(&self, key: impl Into<Vec<u8>>, from: i64) -> mpsc::Receiver<mvccpb::Event> {
        let (out, rx) = mpsc::channel(64);
        let client = self.clone();
        let key = key.into();
        tokio::spawn(async move {
            let mut next = from;
            loop {
                let (tx, reqs) = mpsc::channel(1);
                let create = pb::WatchCreateRequest {
                    key: key.clone(),
                    start_revision: next,
                    ..Default::default()
                };
                let _ = tx
                    .send(pb::WatchRequest {
                        request_union: Some(pb::watch_request::RequestUnion::CreateRequest(create)),
                    })
                    .await;
                let opened = WatchClient::new(client.channel())
                    .watch(ReceiverStream::new(reqs))
                    .await;
                if let Ok(s) = opened {
                    let mut s = s.into_inner();
                    while let Ok(Some(r)) = s.message().await {
                        if r.canceled {
                            return; // compacted away, or refused: nothing to resume
                        }
                        for e in r.events {
                            next = e.kv.as_ref().map_or(next, |kv| kv.mod_revision + 1);
                            if out.send(e).await.is_err() {
                                return;
                            }
                        }
                    }
                }
                if out.is_closed() {
                    return;
                }
                client.fail_over(client.current.load(Ordering::Relaxed));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        rx
    }
}

/// A lease kept alive in the background; dropping it stops the keep-alives
/// (the lease then runs out by itself).
pub struct KeepAlive {
    task: tokio::task::JoinHandle<()>,
}

impl Drop for KeepAlive {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A held lock: its key and its fencing token.
#[derive(Clone, Debug)]
pub struct LockGuard {
    pub key: Vec<u8>,
    /// The lock key's create revision: higher for every later holder.
    pub token: i64,
}
