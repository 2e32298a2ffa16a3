//! The nemesis: the faults of a chaos run, drawn from the seed.

use super::cluster::{channel, leader, Cluster};
use super::{micros, DOWN, PAUSE, SPLIT};
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use std::time::{Duration, Instant};
use synod_etcd::pb::etcdserverpb as pb;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Fault {
    Kill,
    KillLeader,
    Pause,
    Partition,
    PartitionLeader,
    Churn,
    DiskFull,
    Slow,
}

impl Fault {
    pub(super) fn needs_net(self) -> bool {
        matches!(
            self,
            Fault::Partition | Fault::PartitionLeader | Fault::Slow
        )
    }
}

pub(super) fn faults(list: &str) -> Result<Vec<Fault>, String> {
    let mut out = Vec::new();
    for f in list.split(',').map(str::trim).filter(|f| !f.is_empty()) {
        match f {
            "all" => out.extend([
                Fault::Kill,
                Fault::KillLeader,
                Fault::Pause,
                Fault::Partition,
                Fault::PartitionLeader,
                Fault::Churn,
                Fault::DiskFull,
                Fault::Slow,
            ]),
            "kill" => out.push(Fault::Kill),
            "kill-leader" => out.push(Fault::KillLeader),
            "pause" => out.push(Fault::Pause),
            "partition" => out.push(Fault::Partition),
            "partition-leader" => out.push(Fault::PartitionLeader),
            "churn" => out.push(Fault::Churn),
            "disk-full" => out.push(Fault::DiskFull),
            "slow" => out.push(Fault::Slow),
            other => {
                return Err(format!(
                    "--faults: {other:?} is not one of kill, kill-leader, pause, partition, \
                     partition-leader, churn, disk-full, slow, all"
                ))
            }
        }
    }
    Ok(out)
}

/// What the nemesis did, and when (microseconds into the run).
pub(super) struct Timeline {
    pub(super) events: Vec<(u64, String)>,
    /// When each leader was killed.
    pub(super) leader_kills: Vec<u64>,
    /// When each leader was cut off from the others.
    pub(super) leader_isolations: Vec<u64>,
    /// When each fault began and ended.
    pub(super) windows: Vec<(u64, u64)>,
}

pub(super) async fn nemesis(
    cluster: &mut Cluster,
    kinds: &[Fault],
    rng: &mut ChaCha8Rng,
    start: Instant,
    until: Instant,
    timeline: &mut Timeline,
) -> Result<(), String> {
    let endpoints: Vec<String> = (0..cluster.members.len())
        .map(|i| cluster.endpoint(i))
        .collect();
    let n = cluster.members.len();
    loop {
        let wait = Duration::from_millis(rng.gen_range(1000..3000));
        if Instant::now() + wait + SPLIT >= until || kinds.is_empty() {
            return Ok(());
        }
        tokio::time::sleep(wait).await;
        let kind = kinds[rng.gen_range(0..kinds.len())];
        let random = rng.gen_range(0..n);
        let (victim, was_leader) = match kind {
            Fault::KillLeader | Fault::PartitionLeader => match leader(&endpoints).await {
                Some(l) => (l, true),
                None => (random, false),
            },
            Fault::DiskFull => {
                let v = cluster.small_disk.as_ref().map_or(0, |(i, _)| *i);
                (v, leader(&endpoints).await == Some(v))
            }
            // A follower: removing the leader is a handover, another fault.
            Fault::Churn => match leader(&endpoints).await {
                Some(l) => ((l + 1 + random % (n - 1).max(1)) % n, false),
                None => (random, false),
            },
            _ => (random, leader(&endpoints).await == Some(random)),
        };
        let name = cluster.members[victim].name.clone();
        let role = if was_leader { " (leader)" } else { "" };
        match kind {
            Fault::Kill | Fault::KillLeader => {
                cluster.kill(victim);
                let at = micros(start);
                if was_leader {
                    timeline.leader_kills.push(at);
                }
                timeline.events.push((at, format!("SIGKILL {name}{role}")));
                tokio::time::sleep(DOWN).await;
                cluster.start(victim)?;
                let end = micros(start);
                timeline.windows.push((at, end));
                timeline.events.push((end, format!("restart {name}")));
            }
            Fault::Pause => {
                cluster.signal(victim, libc::SIGSTOP);
                let at = micros(start);
                timeline.events.push((at, format!("SIGSTOP {name}{role}")));
                tokio::time::sleep(PAUSE).await;
                cluster.signal(victim, libc::SIGCONT);
                let end = micros(start);
                timeline.windows.push((at, end));
                timeline.events.push((end, format!("SIGCONT {name}")));
            }
            Fault::DiskFull => {
                let at = micros(start);
                let (_, disk) = cluster.small_disk.as_ref().expect("a small disk");
                let taken = disk.fill()?;
                timeline.events.push((
                    at,
                    format!("disk of {name}{role} full ({} MiB of ballast)", taken >> 20),
                ));
                tokio::time::sleep(SPLIT).await;
                disk.free()?;
                let end = micros(start);
                timeline.windows.push((at, end));
                // A member that stopped on the full disk is started again.
                let stopped = cluster.members[victim]
                    .process
                    .as_mut()
                    .is_some_and(|p| matches!(p.try_wait(), Ok(Some(_))));
                if stopped {
                    cluster.kill(victim);
                    cluster.start(victim)?;
                    timeline
                        .events
                        .push((end, format!("disk freed; {name} had stopped: restarted")));
                } else {
                    timeline
                        .events
                        .push((end, format!("disk freed; {name} kept running")));
                }
            }
            Fault::Churn => {
                let at = micros(start);
                let line = churn(cluster, victim, &endpoints).await?;
                let end = micros(start);
                timeline.windows.push((at, end));
                timeline.events.push((at, line));
            }
            Fault::Slow => {
                let net = cluster
                    .net
                    .as_ref()
                    .expect("slow links run with namespaces");
                net.slow(victim)?;
                let at = micros(start);
                timeline
                    .events
                    .push((at, format!("link of {name}{role} slowed")));
                tokio::time::sleep(SPLIT).await;
                net.unslow(victim)?;
                let end = micros(start);
                timeline.windows.push((at, end));
                timeline
                    .events
                    .push((end, format!("link of {name} at full speed")));
            }
            Fault::Partition | Fault::PartitionLeader => {
                // The victim and, for a plain partition, whoever else makes
                // up a minority, against the rest.
                let mut minority = vec![victim];
                if kind == Fault::Partition {
                    while minority.len() < (n - 1) / 2 {
                        let other = rng.gen_range(0..n);
                        if !minority.contains(&other) {
                            minority.push(other);
                        }
                    }
                }
                let majority: Vec<usize> = (0..n).filter(|i| !minority.contains(i)).collect();
                let names = |g: &[usize]| {
                    g.iter()
                        .map(|i| cluster.members[*i].name.as_str())
                        .collect::<Vec<_>>()
                        .join(" ")
                };
                let line = format!(
                    "partition [{}]{role} | [{}]",
                    names(&minority),
                    names(&majority)
                );
                let net = cluster
                    .net
                    .as_ref()
                    .expect("partitions run with namespaces");
                net.partition(&[minority.clone(), majority])?;
                let at = micros(start);
                if was_leader {
                    timeline.leader_isolations.push(at);
                }
                timeline.events.push((at, line));
                tokio::time::sleep(SPLIT).await;
                net.heal()?;
                let end = micros(start);
                timeline.windows.push((at, end));
                timeline.events.push((end, "heal".to_string()));
            }
        }
    }
}

/// Asks the members in turn until one answers `call` with success, for up
/// to `patience`; the last refusal otherwise.
async fn ask<T, F, Fut>(
    endpoints: &[String],
    skip: usize,
    patience: Duration,
    call: F,
) -> Result<T, String>
where
    F: Fn(pb::cluster_client::ClusterClient<tonic::transport::Channel>) -> Fut,
    Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
{
    let deadline = Instant::now() + patience;
    let mut i = (skip + 1) % endpoints.len();
    loop {
        let client = pb::cluster_client::ClusterClient::new(channel(&endpoints[i]));
        match call(client).await {
            Ok(r) => return Ok(r.into_inner()),
            Err(e) if Instant::now() > deadline => return Err(e.message().to_string()),
            Err(_) => {
                i = (i + 1) % endpoints.len();
                if i == skip {
                    i = (i + 1) % endpoints.len();
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

/// Membership churn: removes member `victim`, wipes its data, adds it back
/// as a learner with the same name and peer URL, starts it to join the
/// cluster that exists, and promotes it once it has caught up. Returns the
/// timeline's line; a refusal is recorded there, not an error of the run.
async fn churn(
    cluster: &mut Cluster,
    victim: usize,
    endpoints: &[String],
) -> Result<String, String> {
    let name = cluster.members[victim].name.clone();
    let peer = cluster.peer_url(victim);
    let list = ask(
        endpoints,
        victim,
        Duration::from_secs(5),
        |mut c| async move {
            c.member_list(pb::MemberListRequest { linearizable: true })
                .await
        },
    )
    .await;
    let id = match list {
        Ok(l) => match l.members.iter().find(|m| m.peer_ur_ls.contains(&peer)) {
            Some(m) => m.id,
            None => return Ok(format!("churn {name}: not in the member list")),
        },
        Err(e) => return Ok(format!("churn {name}: no member list: {e}")),
    };
    // A cluster still settling after the last fault refuses (strict
    // reconfiguration check); it is asked again for a few seconds.
    let removed = ask(
        endpoints,
        victim,
        Duration::from_secs(5),
        |mut c| async move { c.member_remove(pb::MemberRemoveRequest { id }).await },
    )
    .await;
    if let Err(e) = removed {
        return Ok(format!("churn {name}: removal refused: {e}"));
    }
    cluster.kill(victim);
    super::disk::empty(&cluster.dir.join(&name))?;
    let urls = vec![peer.clone()];
    let added = ask(endpoints, victim, Duration::from_secs(10), |mut c| {
        let peer_ur_ls = urls.clone();
        async move {
            c.member_add(pb::MemberAddRequest {
                peer_ur_ls,
                is_learner: true,
            })
            .await
        }
    })
    .await;
    let new_id = match added {
        Ok(a) => a.member.map_or(0, |m| m.id),
        Err(e) => {
            return Ok(format!(
                "churn {name}: removed, but adding it back failed: {e}"
            ))
        }
    };
    cluster.members[victim].joined = true;
    cluster.start(victim)?;
    // etcd promotes a learner only once its log is close to the leader's.
    let promoted = ask(
        endpoints,
        victim,
        Duration::from_secs(10),
        |mut c| async move {
            c.member_promote(pb::MemberPromoteRequest { id: new_id })
                .await
        },
    )
    .await;
    Ok(match promoted {
        Ok(_) => format!("churn {name}: removed, wiped, added back as a learner, promoted"),
        Err(e) => format!("churn {name}: removed, added back as a learner, not promoted: {e}"),
    })
}
