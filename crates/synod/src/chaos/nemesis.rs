//! The nemesis: the faults of a chaos run, drawn from the seed.

use super::cluster::{leader, Cluster};
use super::{micros, DOWN, PAUSE, SPLIT};
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Fault {
    Kill,
    KillLeader,
    Pause,
    Partition,
    PartitionLeader,
}

impl Fault {
    pub(super) fn needs_net(self) -> bool {
        matches!(self, Fault::Partition | Fault::PartitionLeader)
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
            ]),
            "kill" => out.push(Fault::Kill),
            "kill-leader" => out.push(Fault::KillLeader),
            "pause" => out.push(Fault::Pause),
            "partition" => out.push(Fault::Partition),
            "partition-leader" => out.push(Fault::PartitionLeader),
            other => {
                return Err(format!(
                    "--faults: {other:?} is not one of kill, kill-leader, pause, partition, \
                     partition-leader, all"
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
