//! `synod chaos`: real member processes on this machine, a client workload
//! through etcd's API, faults injected into the processes, and the whole
//! history checked afterwards. The same run works against etcd
//! (`--target etcd`), for a side-by-side comparison.
//!
//! What this first version does (issue 12 has the rest):
//! - **workload**: a register workload on a few hot keys (linearizable get,
//!   put, compare-and-swap), each operation recorded with its invoke and
//!   completion times; a write whose outcome the client could not learn is
//!   indefinite, and that client continues under a new identity;
//! - **nemesis**: SIGKILL of the leader or of a random member and restart on
//!   its data, and SIGSTOP/SIGCONT of a member for longer than an election
//!   timeout;
//! - **checks**: linearizability of the history (the project's checker, as
//!   `synod check-history`), equal HashKV on every member at one revision,
//!   and the write unavailability after each leader kill.
//!
//! Everything random is drawn from `--seed`; the processes and the kernel
//! are not, so a seed repeats the schedule, not the interleaving.

use clap::Args;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use synod_etcd::pb::etcdserverpb as pb;
use synod_sim::history::{OpKind, OpResult, Operation};
use synod_sim::linearizability::{self, CheckResult};
use tonic::transport::Channel;

#[derive(Args)]
pub struct ChaosArgs {
    /// `synod` (this binary's `serve`) or `etcd` (the `etcd` on PATH).
    #[arg(long, default_value = "synod")]
    target: String,
    /// Members of the cluster.
    #[arg(long, default_value_t = 3)]
    members: usize,
    /// Seconds of workload and faults.
    #[arg(long, default_value_t = 20)]
    duration: u64,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Comma-separated: `kill` (a random member), `kill-leader`, `pause`,
    /// `partition` (a random minority cut off), `partition-leader` (the
    /// leader cut off); or `all`. Partitions need root (network namespaces);
    /// without it `all` leaves them out and says so.
    #[arg(long, default_value = "all")]
    faults: String,
    /// Concurrent clients.
    #[arg(long, default_value_t = 8)]
    clients: usize,
    /// Keys the clients share.
    #[arg(long, default_value_t = 4)]
    keys: usize,
    /// Where the members' data and logs, the history (`history.jsonl`) and
    /// the fault timeline go; a temporary directory if not given.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Print the summary as JSON.
    #[arg(long)]
    json: bool,
    /// Plant a deliberate bug in every synod member (`synod serve
    /// --unsafe-bug`; builds with the `broken` feature only), to see the run
    /// catch it: follower-reads-own-commit, reply-before-persist,
    /// vote-without-log-check, commit-old-term-by-counting.
    #[arg(long, value_name = "NAME")]
    unsafe_bug: Option<String>,
}

/// How long a client waits for one answer.
const OP_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a paused member stays paused: more than an election timeout.
const PAUSE: Duration = Duration::from_millis(1500);
/// How long a killed member stays down.
const DOWN: Duration = Duration::from_millis(1000);
/// How long a partition lasts: more than an election timeout.
const SPLIT: Duration = Duration::from_millis(2000);

struct Member {
    name: String,
    /// Where it listens: 127.0.0.1, or its namespace's address.
    host: String,
    client: u16,
    peer: u16,
    process: Option<Child>,
}

struct Cluster {
    target: String,
    /// `--unsafe-bug`, handed to every synod member.
    bug: Option<String>,
    /// The members' namespaces, when partitions are run.
    net: Option<crate::chaos_net::Net>,
    dir: PathBuf,
    members: Vec<Member>,
}

fn free_port() -> Result<u16, String> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    Ok(l.local_addr().map_err(|e| e.to_string())?.port())
}

impl Cluster {
    fn new(
        target: &str,
        dir: &Path,
        n: usize,
        net: Option<crate::chaos_net::Net>,
    ) -> Result<Cluster, String> {
        let mut members = Vec::new();
        for i in 0..n {
            // In its own namespace each member has the ports to itself.
            let (host, client, peer) = match &net {
                Some(net) => (net.ip(i), 2379, 2380),
                None => ("127.0.0.1".to_string(), free_port()?, free_port()?),
            };
            members.push(Member {
                name: format!("m{}", i + 1),
                host,
                client,
                peer,
                process: None,
            });
        }
        Ok(Cluster {
            target: target.to_string(),
            bug: None,
            net,
            dir: dir.to_path_buf(),
            members,
        })
    }

    fn endpoint(&self, i: usize) -> String {
        let m = &self.members[i];
        format!("http://{}:{}", m.host, m.client)
    }

    /// Starts member `i` with the flags of etcd's loopback cluster example
    /// (the same for synod and etcd), on its data directory.
    fn start(&mut self, i: usize) -> Result<(), String> {
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
            .args(["--initial-cluster-state", "new"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log);
        let child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", program.display()))?;
        self.members[i].process = Some(child);
        Ok(())
    }

    fn signal(&self, i: usize, sig: libc::c_int) {
        if let Some(p) = &self.members[i].process {
            // SAFETY: kill(2) on a child this process started and has not
            // reaped; no memory is shared.
            unsafe {
                libc::kill(p.id() as libc::pid_t, sig);
            }
        }
    }

    fn kill(&mut self, i: usize) {
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

fn channel(endpoint: &str) -> Channel {
    Channel::from_shared(endpoint.to_string())
        .expect("a valid endpoint")
        .connect_timeout(Duration::from_millis(500))
        .timeout(OP_TIMEOUT)
        .connect_lazy()
}

/// The index of the member that says it leads, if one does.
async fn leader(cluster: &[String]) -> Option<usize> {
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

/// Microseconds since the run started.
fn micros(start: Instant) -> u64 {
    start.elapsed().as_micros() as u64
}

/// One client: operations on shared keys until `until`, each recorded.
async fn client(
    worker: usize,
    seed: u64,
    endpoints: Vec<String>,
    keys: usize,
    start: Instant,
    until: Instant,
    history: Arc<Mutex<Vec<Operation>>>,
) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ (worker as u64).wrapping_mul(0x9e37_79b9));
    let mut generation = 0u64;
    let mut target = worker % endpoints.len();
    let mut kv = pb::kv_client::KvClient::new(channel(&endpoints[target]));
    let mut seen: Vec<Option<String>> = vec![None; keys];
    let mut n = 0u64;
    while Instant::now() < until {
        let id = (worker as u64) * 1_000_000 + generation;
        let k = rng.gen_range(0..keys);
        let key = format!("k{k}");
        n += 1;
        let value = format!("c{worker}-{n}");
        let roll = rng.gen_range(0..10);
        let invoke = micros(start);
        let (kind, answer) = if roll < 5 {
            let req = pb::RangeRequest {
                key: key.clone().into_bytes(),
                ..Default::default()
            };
            let r = kv.range(req).await.map(|r| {
                let v = r
                    .into_inner()
                    .kvs
                    .first()
                    .map(|kv| String::from_utf8_lossy(&kv.value).into_owned());
                OpResult::Read(v)
            });
            if let Ok(OpResult::Read(v)) = &r {
                seen[k].clone_from(v);
            }
            (OpKind::Get { key }, r)
        } else if roll < 8 {
            let req = pb::PutRequest {
                key: key.clone().into_bytes(),
                value: value.clone().into_bytes(),
                ..Default::default()
            };
            let r = kv.put(req).await.map(|_| OpResult::Ok);
            (OpKind::Put { key, value }, r)
        } else {
            let expected = seen[k].clone();
            let r = kv
                .txn(cas(&key, expected.as_deref(), &value))
                .await
                .map(|r| OpResult::Swapped(r.into_inner().succeeded));
            (
                OpKind::Cas {
                    key,
                    expected,
                    value,
                },
                r,
            )
        };
        let op = match answer {
            Ok(result) => Operation::completed(id, kind, invoke, micros(start), result),
            // A read that failed changed nothing: it is left out.
            Err(_) if matches!(kind, OpKind::Get { .. }) => {
                target = (target + 1) % endpoints.len();
                kv = pb::kv_client::KvClient::new(channel(&endpoints[target]));
                continue;
            }
            // A write may have taken effect: indefinite, and this client goes
            // on as another (its old self may still be pending forever).
            Err(_) => {
                generation += 1;
                target = (target + 1) % endpoints.len();
                kv = pb::kv_client::KvClient::new(channel(&endpoints[target]));
                Operation::indefinite(id, kind, invoke)
            }
        };
        history.lock().unwrap_or_else(|p| p.into_inner()).push(op);
    }
}

/// Put `value` if `key` holds `expected` (absent for `None`).
fn cas(key: &str, expected: Option<&str>, value: &str) -> pb::TxnRequest {
    use pb::compare::{CompareResult, CompareTarget, TargetUnion};
    let compare = match expected {
        Some(v) => pb::Compare {
            result: CompareResult::Equal as i32,
            target: CompareTarget::Value as i32,
            key: key.as_bytes().to_vec(),
            target_union: Some(TargetUnion::Value(v.as_bytes().to_vec())),
            ..Default::default()
        },
        None => pb::Compare {
            result: CompareResult::Equal as i32,
            target: CompareTarget::Create as i32,
            key: key.as_bytes().to_vec(),
            target_union: Some(TargetUnion::CreateRevision(0)),
            ..Default::default()
        },
    };
    pb::TxnRequest {
        compare: vec![compare],
        success: vec![pb::RequestOp {
            request: Some(pb::request_op::Request::RequestPut(pb::PutRequest {
                key: key.as_bytes().to_vec(),
                value: value.as_bytes().to_vec(),
                ..Default::default()
            })),
        }],
        failure: Vec::new(),
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    Kill,
    KillLeader,
    Pause,
    Partition,
    PartitionLeader,
}

impl Fault {
    fn needs_net(self) -> bool {
        matches!(self, Fault::Partition | Fault::PartitionLeader)
    }
}

fn faults(list: &str) -> Result<Vec<Fault>, String> {
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
struct Timeline {
    events: Vec<(u64, String)>,
    /// When each leader was killed.
    leader_kills: Vec<u64>,
    /// When each leader was cut off from the others.
    leader_isolations: Vec<u64>,
}

async fn nemesis(
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
                timeline
                    .events
                    .push((micros(start), format!("restart {name}")));
            }
            Fault::Pause => {
                cluster.signal(victim, libc::SIGSTOP);
                timeline
                    .events
                    .push((micros(start), format!("SIGSTOP {name}{role}")));
                tokio::time::sleep(PAUSE).await;
                cluster.signal(victim, libc::SIGCONT);
                timeline
                    .events
                    .push((micros(start), format!("SIGCONT {name}")));
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
                timeline.events.push((micros(start), "heal".to_string()));
            }
        }
    }
}

/// Reads every key at the end, once the cluster takes writes again, so the
/// history ends with what the cluster kept.
async fn final_reads(
    endpoints: &[String],
    keys: usize,
    start: Instant,
    history: &Mutex<Vec<Operation>>,
) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    for k in 0..keys {
        let key = format!("k{k}");
        loop {
            let ep = &endpoints[k % endpoints.len()];
            let mut kv = pb::kv_client::KvClient::new(channel(ep));
            let invoke = micros(start);
            let req = pb::RangeRequest {
                key: key.clone().into_bytes(),
                ..Default::default()
            };
            match kv.range(req).await {
                Ok(r) => {
                    let v = r
                        .into_inner()
                        .kvs
                        .first()
                        .map(|kv| String::from_utf8_lossy(&kv.value).into_owned());
                    let op = Operation::completed(
                        u64::MAX - k as u64,
                        OpKind::Get { key: key.clone() },
                        invoke,
                        micros(start),
                        OpResult::Read(v),
                    );
                    history.lock().unwrap_or_else(|p| p.into_inner()).push(op);
                    break;
                }
                Err(e) if Instant::now() > deadline => {
                    return Err(format!("the cluster did not recover within 30 s: {e}"))
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }
    Ok(())
}

/// Every member's HashKV at the revision the first member reports, or why a
/// member could not give one within 30 s (one that never reaches that
/// revision lost writes: a failed check, not a failed run).
async fn hashes(endpoints: &[String]) -> Result<Vec<Result<u32, String>>, String> {
    let mut kv = pb::kv_client::KvClient::new(channel(&endpoints[0]));
    let req = pb::RangeRequest {
        key: b"k0".to_vec(),
        ..Default::default()
    };
    let rev = kv
        .range(req)
        .await
        .map_err(|e| e.to_string())?
        .into_inner()
        .header
        .map_or(0, |h| h.revision);
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    for ep in endpoints {
        let mut m = pb::maintenance_client::MaintenanceClient::new(channel(ep));
        loop {
            match m.hash_kv(pb::HashKvRequest { revision: rev }).await {
                Ok(r) => {
                    out.push(Ok(r.into_inner().hash));
                    break;
                }
                Err(e) if Instant::now() > deadline => {
                    out.push(Err(format!("{ep}: {}", e.message())));
                    break;
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }
    Ok(out)
}

/// For each leader kill, microseconds from the kill to the first write
/// invoked after it and acknowledged.
fn unavailability(history: &[Operation], kills: &[u64]) -> Vec<u64> {
    kills
        .iter()
        .filter_map(|&at| {
            history
                .iter()
                .filter(|op| !matches!(op.kind, OpKind::Get { .. }) && op.invoke_us >= at)
                .filter_map(|op| op.complete_us)
                .min()
                .map(|done| done - at)
        })
        .collect()
}

pub fn run(a: ChaosArgs) -> Result<ExitCode, String> {
    if !matches!(a.target.as_str(), "synod" | "etcd") {
        return Err(format!(
            "--target: {:?} is neither synod nor etcd",
            a.target
        ));
    }
    if a.members == 0 || a.clients == 0 || a.keys == 0 {
        return Err("--members, --clients and --keys must be > 0".into());
    }
    let mut kinds = faults(&a.faults)?;
    if kinds.iter().any(|k| k.needs_net()) {
        if let Some(why) = crate::chaos_net::Net::unavailable() {
            if a.faults
                .split(',')
                .any(|f| f.trim().starts_with("partition"))
            {
                return Err(format!("--faults: partitions cannot run here: {why}"));
            }
            eprintln!("synod chaos: no partitions in this run: {why}");
            kinds.retain(|k| !k.needs_net());
        }
    }
    // Without --out, a run that passes leaves nothing behind; one that fails
    // keeps its evidence and says where.
    let keep = a.out.is_some();
    let dir = match &a.out {
        Some(d) => d.clone(),
        None => std::env::temp_dir().join(format!("synod-chaos-{}", std::process::id())),
    };
    if dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let runtime = tokio::runtime::Runtime::new().map_err(|e| format!("tokio runtime: {e}"))?;
    let result = runtime.block_on(chaos(a, kinds, dir.clone()));
    if !keep && matches!(result, Ok(ExitCode::SUCCESS)) {
        let _ = std::fs::remove_dir_all(&dir);
    }
    result
}

async fn chaos(a: ChaosArgs, kinds: Vec<Fault>, dir: PathBuf) -> Result<ExitCode, String> {
    let net = if kinds.iter().any(|k| k.needs_net()) {
        Some(crate::chaos_net::Net::create(a.members)?)
    } else {
        None
    };
    let mut cluster = Cluster::new(&a.target, &dir, a.members, net)?;
    if let Some(bug) = &a.unsafe_bug {
        if a.target != "synod" {
            return Err("--unsafe-bug plants bugs in synod members only".into());
        }
        // Refused here, before any member starts, if this build cannot.
        crate::serve_cmd::unsafe_bugs(Some(bug))?;
        cluster.bug = Some(bug.clone());
    }
    for i in 0..a.members {
        cluster.start(i)?;
    }
    let endpoints: Vec<String> = (0..a.members).map(|i| cluster.endpoint(i)).collect();
    // The cluster must take a write before the clock starts.
    let ready = Instant::now() + Duration::from_secs(30);
    loop {
        let mut kv = pb::kv_client::KvClient::new(channel(&endpoints[0]));
        let req = pb::PutRequest {
            key: b"chaos/ready".to_vec(),
            ..Default::default()
        };
        if kv.put(req).await.is_ok() {
            break;
        }
        if Instant::now() > ready {
            return Err(format!(
                "the {} cluster did not take a write within 30 s (logs in {})",
                a.target,
                dir.display()
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let start = Instant::now();
    let until = start + Duration::from_secs(a.duration);
    let history = Arc::new(Mutex::new(Vec::new()));
    let mut workers = Vec::new();
    for w in 0..a.clients {
        let h = history.clone();
        let eps = endpoints.clone();
        workers.push(tokio::spawn(client(
            w, a.seed, eps, a.keys, start, until, h,
        )));
    }
    let mut rng = ChaCha8Rng::seed_from_u64(a.seed);
    let mut timeline = Timeline {
        events: Vec::new(),
        leader_kills: Vec::new(),
        leader_isolations: Vec::new(),
    };
    nemesis(&mut cluster, &kinds, &mut rng, start, until, &mut timeline).await?;
    for w in workers {
        let _ = w.await;
    }
    final_reads(&endpoints, a.keys, start, &history).await?;
    let hashes = hashes(&endpoints).await?;
    let history = std::mem::take(&mut *history.lock().unwrap_or_else(|p| p.into_inner()));
    let file = std::fs::File::create(dir.join("history.jsonl")).map_err(|e| e.to_string())?;
    synod_sim::history::write_jsonl(&history, std::io::BufWriter::new(file))
        .map_err(|e| e.to_string())?;
    let lines: String = timeline
        .events
        .iter()
        .map(|(t, e)| format!("{:.3}s {e}\n", *t as f64 / 1e6))
        .collect();
    std::fs::write(dir.join("timeline.txt"), lines).map_err(|e| e.to_string())?;

    let verdict = linearizability::check(&history);
    let ok_ops = history.iter().filter(|o| o.complete_us.is_some()).count();
    let indefinite = history.len() - ok_ops;
    let hashes_equal = hashes.iter().all(|h| h.is_ok() && *h == hashes[0]);
    let mut unavail = unavailability(&history, &timeline.leader_kills);
    unavail.sort_unstable();
    let mut isolated = unavailability(&history, &timeline.leader_isolations);
    isolated.sort_unstable();
    let ms = |us: u64| us as f64 / 1000.0;
    let median = unavail.get(unavail.len() / 2).copied();
    let verdict_text = match &verdict {
        CheckResult::Linearizable => "linearizable".to_string(),
        CheckResult::NotLinearizable(v) => format!("NOT linearizable: {}", v.explanation),
        CheckResult::Unknown { keys } => format!("unknown (search budget ran out on {keys:?})"),
        CheckResult::Malformed { index, reason } => format!("malformed op {index}: {reason}"),
    };
    if a.json {
        println!(
            "{}",
            serde_json::json!({
                "target": a.target,
                "unsafe_bug": a.unsafe_bug,
                "seed": a.seed,
                "members": a.members,
                "duration_s": a.duration,
                "operations": history.len(),
                "completed": ok_ops,
                "indefinite": indefinite,
                "faults": timeline
                    .events
                    .iter()
                    .filter(|(_, e)| e.starts_with("SIG") || e.starts_with("partition"))
                    .count(),
                "leader_kills": timeline.leader_kills.len(),
                "write_unavailability_ms": unavail.iter().map(|u| ms(*u)).collect::<Vec<_>>(),
                "leader_isolations": timeline.leader_isolations.len(),
                "write_unavailability_after_isolation_ms":
                    isolated.iter().map(|u| ms(*u)).collect::<Vec<_>>(),
                "linearizable": verdict.is_linearizable(),
                "verdict": verdict_text,
                "hashkv_equal": hashes_equal,
                "out": dir.display().to_string(),
            })
        );
    } else {
        println!(
            "synod chaos: {} x{}, seed {}, {} s, faults {:?}",
            a.target, a.members, a.seed, a.duration, kinds
        );
        for (t, e) in &timeline.events {
            println!("  {:>8.3}s  {e}", *t as f64 / 1e6);
        }
        println!(
            "operations: {} ({ok_ops} completed, {indefinite} indefinite)",
            history.len()
        );
        println!("history:    {verdict_text}");
        println!(
            "HashKV:     {} ({})",
            if hashes_equal {
                "equal on every member"
            } else {
                "DIFFERS"
            },
            hashes
                .iter()
                .map(|h| match h {
                    Ok(h) => format!("{h:08x}"),
                    Err(e) => e.clone(),
                })
                .collect::<Vec<_>>()
                .join(", ")
        );
        match median {
            Some(m) => println!(
                "write unavailability after {} leader kills: median {:.0} ms, max {:.0} ms",
                unavail.len(),
                ms(m),
                ms(*unavail.last().expect("non-empty"))
            ),
            None => println!("write unavailability: no leader was killed"),
        }
        if let (Some(first), Some(last)) = (isolated.first(), isolated.last()) {
            println!(
                "write unavailability after {} leader isolations: median {:.0} ms, min {:.0} ms, max {:.0} ms",
                isolated.len(),
                ms(isolated[isolated.len() / 2]),
                ms(*first),
                ms(*last)
            );
        }
        println!(
            "history, timeline and member logs in {} (kept with --out, or when a check fails)",
            dir.display()
        );
    }
    drop(cluster);
    if verdict.is_linearizable() && hashes_equal {
        Ok(ExitCode::SUCCESS)
    } else {
        Ok(ExitCode::from(1))
    }
}
