//! The members of a chaos run as real processes: started with etcd's flags
//! (the same for synod and etcd), signalled, killed and restarted on their
//! data directories.

use super::net::Net;
use super::OP_TIMEOUT;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use synod_etcd::pb::etcdserverpb as pb;
use synod_server::cluster::free_loopback_port;
use tonic::transport::Channel;

pub(super) struct Member {
    pub(super) name: String,
    /// Where it listens: 127.0.0.1, or its namespace's address.
    pub(super) host: String,
    pub(super) client: u16,
    pub(super) peer: u16,
    pub(super) process: Option<Child>,
    /// Removed and added back: it joins a cluster that exists.
    pub(super) joined: bool,
}

pub(super) struct Cluster {
    pub(super) target: String,
    /// `--unsafe-bug`, handed to every synod member.
    pub(super) bug: Option<String>,
    /// The members' namespaces, when partitions are run.
    pub(super) net: Option<Net>,
    /// The member whose data directory is a small disk of its own (for
    /// the `disk-full` fault).
    pub(super) small_disk: Option<(usize, super::disk::SmallDisk)>,
    pub(super) dir: PathBuf,
    pub(super) members: Vec<Member>,
}

impl Cluster {
    pub(super) fn new(
        target: &str,
        dir: &Path,
        n: usize,
        net: Option<Net>,
    ) -> Result<Cluster, String> {
        let mut members = Vec::new();
        for i in 0..n {
            // In its own namespace each member has the ports to itself.
            let (host, client, peer) = match &net {
                Some(net) => (net.ip(i), 2379, 2380),
                None => (
                    "127.0.0.1".to_string(),
                    free_loopback_port(),
                    free_loopback_port(),
                ),
            };
            members.push(Member {
                name: format!("m{}", i + 1),
                host,
                client,
                peer,
                process: None,
                joined: false,
            });
        }
        Ok(Cluster {
            target: target.to_string(),
            bug: None,
            net,
            small_disk: None,
            dir: dir.to_path_buf(),
            members,
        })
    }

    pub(super) fn peer_url(&self, i: usize) -> String {
        let m = &self.members[i];
        format!("http://{}:{}", m.host, m.peer)
    }

    pub(super) fn endpoint(&self, i: usize) -> String {
        let m = &self.members[i];
        format!("http://{}:{}", m.host, m.client)
    }

    /// Starts member `i` with the flags of etcd's loopback cluster example
    /// (the same for synod and etcd), on its data directory.
    pub(super) fn start(&mut self, i: usize) -> Result<(), String> {
        let initial = self
            .members
            .iter()
            .map(|m| format!("{}=http://{}:{}", m.name, m.host, m.peer))
            .collect::<Vec<_>>()
            .join(",");
        let m = &self.members[i];
        let program = match self.target.as_str() {
            "synod" => std::env::current_exe().map_err(|e| e.to_string())?,
            _ => PathBuf::from("etcd"),
        };
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("{}.log", m.name)))
            .map_err(|e| e.to_string())?;
        let mut cmd = match &self.net {
            // `ip netns exec` execs the member in place: signals reach it.
            Some(net) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", &net.ns(i)]).arg(&program);
                c
            }
            None => Command::new(&program),
        };
        if self.target == "synod" {
            cmd.arg("serve");
            if let Some(bug) = &self.bug {
                cmd.args(["--unsafe-bug", bug]);
            }
        }
        let client = format!("http://{}:{}", m.host, m.client);
        let peer = format!("http://{}:{}", m.host, m.peer);
        cmd.args(["--name", &m.name, "--data-dir"])
            .arg(self.dir.join(&m.name))
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &initial])
            .args(["--initial-cluster-token", "chaos"])
            .args([
                "--initial-cluster-state",
                if m.joined { "existing" } else { "new" },
            ])
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log);
        let child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", program.display()))?;
        self.members[i].process = Some(child);
        Ok(())
    }

    pub(super) fn signal(&self, i: usize, sig: libc::c_int) {
        if let Some(p) = &self.members[i].process {
            // SAFETY: kill(2) on a child this process started and has not
            // reaped; no memory is shared.
            unsafe {
                libc::kill(p.id() as libc::pid_t, sig);
            }
        }
    }

    /// Starts again every member whose process has exited (a full disk can
    /// stop one after the nemesis looked); returns their names.
    pub(super) fn restart_stopped(&mut self) -> Result<Vec<String>, String> {
        let mut restarted = Vec::new();
        for i in 0..self.members.len() {
            let exited = match self.members[i].process.as_mut() {
                Some(p) => matches!(p.try_wait(), Ok(Some(_))),
                None => true,
            };
            if exited {
                self.kill(i);
                self.start(i)?;
                restarted.push(self.members[i].name.clone());
            }
        }
        Ok(restarted)
    }

    pub(super) fn kill(&mut self, i: usize) {
        if let Some(mut p) = self.members[i].process.take() {
            let _ = p.kill();
            let _ = p.wait();
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.signal(i, libc::SIGCONT);
            self.kill(i);
        }
    }
}

pub(super) fn channel(endpoint: &str) -> Channel {
    Channel::from_shared(endpoint.to_string())
        .expect("a valid endpoint")
        .connect_timeout(Duration::from_millis(500))
        .timeout(OP_TIMEOUT)
        .connect_lazy()
}

/// The index of the member that says it leads, if one does.
pub(super) async fn leader(cluster: &[String]) -> Option<usize> {
    for (i, ep) in cluster.iter().enumerate() {
        let mut m = pb::maintenance_client::MaintenanceClient::new(channel(ep));
        let Ok(Ok(s)) =
            tokio::time::timeout(Duration::from_millis(500), m.status(pb::StatusRequest {})).await
        else {
            continue;
        };
        let s = s.into_inner();
        if s.leader != 0 && Some(s.leader) == s.header.map(|h| h.member_id) {
            return Some(i);
        }
    }
    None
}
