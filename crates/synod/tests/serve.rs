//! Three `synod serve` processes on loopback, started with the flags an etcd
//! three-member cluster is started with: writes through every member, the
//! leader's process SIGKILLed, every acknowledged write still readable, the
//! killed member restarted on its data and caught up. And the configurations
//! a member must refuse, each with its reason and no data touched.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};
use synod_client::pb::etcdserverpb as pb;
use tonic::transport::Channel;

use synod_server::cluster::free_loopback_port as free_port;

struct Cluster {
    dir: PathBuf,
    names: Vec<String>,
    clients: Vec<u16>,
    peers: Vec<u16>,
    token: String,
    /// Members `0..initial` form the cluster; the others join it later
    /// (`--initial-cluster-state existing`, after `etcdctl member add`).
    initial: usize,
    /// Flags given to every member.
    extra: Vec<String>,
    /// `http` or `https`, for client and for peer URLs.
    client_scheme: &'static str,
    peer_scheme: &'static str,
}

impl Cluster {
    fn new(dir: &Path, n: usize) -> Cluster {
        Cluster {
            dir: dir.to_path_buf(),
            names: (1..=n).map(|i| format!("infra{i}")).collect(),
            clients: (0..n).map(|_| free_port()).collect(),
            peers: (0..n).map(|_| free_port()).collect(),
            token: "etcd-cluster-1".into(),
            initial: n,
            extra: Vec::new(),
            client_scheme: "http",
            peer_scheme: "http",
        }
    }

    /// The `--initial-cluster` of member `i`: the initial members, and for
    /// a member that joins, every member up to it (as etcdctl's `member
    /// add` prints it).
    fn initial_cluster_of(&self, i: usize) -> String {
        self.names
            .iter()
            .zip(&self.peers)
            .take(self.initial.max(i + 1))
            .map(|(n, p)| format!("{n}={}://127.0.0.1:{p}", self.peer_scheme))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn data_dir(&self, i: usize) -> PathBuf {
        self.dir.join(format!("{}.etcd", self.names[i]))
    }

    /// The exact command line of etcd's three-member loopback example.
    fn command(&self, i: usize) -> Command {
        let client = format!("{}://127.0.0.1:{}", self.client_scheme, self.clients[i]);
        let peer = format!("{}://127.0.0.1:{}", self.peer_scheme, self.peers[i]);
        let state = if i < self.initial { "new" } else { "existing" };
        let mut c = Command::new(env!("CARGO_BIN_EXE_synod"));
        c.arg("serve")
            .args(["--name", &self.names[i], "--data-dir"])
            .arg(self.data_dir(i))
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &self.initial_cluster_of(i)])
            .args(["--initial-cluster-token", &self.token])
            .args(["--initial-cluster-state", state])
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        c
    }

    fn start(&self, i: usize) -> Child {
        self.command(i).spawn().expect("synod serve starts")
    }

    fn channel(&self, i: usize) -> Channel {
        Channel::from_shared(format!("http://127.0.0.1:{}", self.clients[i]))
            .unwrap()
            .connect_timeout(Duration::from_secs(1))
            .timeout(Duration::from_secs(10))
            .connect_lazy()
    }
}

/// Runs `cmd` to its end (it must fail fast), killing it after 20 s.
fn run_to_end(mut cmd: Command) -> Output {
    let mut child = cmd.spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("synod serve did not refuse its configuration within 20 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

struct Reap(Vec<Option<Child>>);

impl Drop for Reap {
    fn drop(&mut self) {
        for c in self.0.iter_mut().flatten() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

async fn put(ch: Channel, k: &str, v: &str) -> Result<pb::PutResponse, tonic::Status> {
    let mut kv = pb::kv_client::KvClient::new(ch);
    let req = pb::PutRequest {
        key: k.into(),
        value: v.into(),
        ..Default::default()
    };
    kv.put(req).await.map(|r| r.into_inner())
}

/// Retries a write until the cluster takes it (an election may be under way).
async fn put_eventually(ch: Channel, k: &str, v: &str) -> pb::PutResponse {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match put(ch.clone(), k, v).await {
            Ok(r) => return r,
            Err(e) if Instant::now() < deadline => {
                assert!(
                    matches!(
                        e.code(),
                        tonic::Code::Unavailable | tonic::Code::DeadlineExceeded
                    ),
                    "{e:?}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("no write accepted within 30 s: {e:?}"),
        }
    }
}

async fn get(ch: Channel, k: &str, serializable: bool) -> Option<Vec<u8>> {
    let mut kv = pb::kv_client::KvClient::new(ch);
    let req = pb::RangeRequest {
        key: k.into(),
        serializable,
        ..Default::default()
    };
    let r = kv.range(req).await.ok()?.into_inner();
    r.kvs.first().map(|kv| kv.value.clone())
}

async fn status(ch: Channel) -> Option<pb::StatusResponse> {
    let mut m = pb::maintenance_client::MaintenanceClient::new(ch);
    m.status(pb::StatusRequest {})
        .await
        .ok()
        .map(|r| r.into_inner())
}

/// The index of the member that `alive` members agree leads.
async fn leader(c: &Cluster, alive: &[usize]) -> usize {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        for &i in alive {
            if let Some(s) = status(c.channel(i)).await {
                if s.leader != 0 && s.leader == s.header.as_ref().unwrap().member_id {
                    return i;
                }
            }
        }
        assert!(Instant::now() < deadline, "no leader among {alive:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_processes_survive_the_leader_killed_and_catch_it_up() {
    survive_the_leader_killed(&[]).await;
}

/// The same on the Multi-Paxos engine, with a snapshot every 10 slots: the
/// killed member comes back from its journal and image, and is caught up
/// past the slots the others compacted away.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_multipaxos_processes_survive_the_leader_killed_and_catch_it_up() {
    survive_the_leader_killed(&["--engine", "multipaxos", "--snapshot-count", "10"]).await;
}

async fn survive_the_leader_killed(flags: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let mut c = Cluster::new(dir.path(), 3);
    c.extra = flags.iter().map(|f| f.to_string()).collect();
    let mut procs = Reap((0..3).map(|i| Some(c.start(i))).collect());

    // Writes through every member: followers forward them to the leader.
    let mut acked = Vec::new();
    for i in 0..3 {
        for j in 0..5 {
            let (k, v) = (format!("k{i}-{j}"), format!("v{i}-{j}"));
            put_eventually(c.channel(i), &k, &v).await;
            acked.push((k, v));
        }
    }
    // Every member reports the same cluster, and a distinct id.
    let mut ids = Vec::new();
    for i in 0..3 {
        let h = status(c.channel(i)).await.unwrap().header.unwrap();
        ids.push((h.cluster_id, h.member_id));
    }
    assert!(ids.iter().all(|(cid, _)| *cid == ids[0].0), "{ids:?}");
    ids.dedup_by_key(|(_, m)| *m);
    assert_eq!(ids.len(), 3, "member ids must differ: {ids:?}");

    // SIGKILL the leader's process: no goodbye, no flush.
    let l = leader(&c, &[0, 1, 2]).await;
    let mut killed = procs.0[l].take().unwrap();
    killed.kill().unwrap();
    killed.wait().unwrap();
    let alive: Vec<usize> = (0..3).filter(|i| *i != l).collect();
    let new = leader(&c, &alive).await;
    assert_ne!(new, l);
    for &i in &alive {
        for (k, v) in &acked {
            assert_eq!(
                get(c.channel(i), k, false).await.as_deref(),
                Some(v.as_bytes()),
                "{k} lost on member {i} after the leader was killed"
            );
        }
    }
    let r = put_eventually(c.channel(alive[0]), "after", "failover").await;
    let mut after = r.header.unwrap().revision;
    // Enough slots for the survivors to compact past what the killed member
    // holds (with `--snapshot-count 10`).
    for j in 0..25 {
        let r = put_eventually(c.channel(alive[j % 2]), "more", &j.to_string()).await;
        after = r.header.unwrap().revision;
    }

    // The killed member comes back from its disk and catches up.
    procs.0[l] = Some(c.start(l));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        // A serializable read shows what this member itself has applied.
        if get(c.channel(l), "after", true).await.as_deref() == Some(b"failover".as_slice()) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "restarted member never caught up"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while get(c.channel(l), "more", true).await.as_deref() != Some(b"24".as_slice()) {
        assert!(
            Instant::now() < deadline,
            "restarted member stopped catching up"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let s = status(c.channel(l)).await.unwrap();
    assert!(s.header.unwrap().revision >= after);
    for (k, v) in &acked {
        assert_eq!(
            get(c.channel(l), k, true).await.as_deref(),
            Some(v.as_bytes())
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_configurations_are_refused_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let c = Cluster::new(dir.path(), 1);
    let mut procs = Reap(vec![Some(c.start(0))]);
    put_eventually(c.channel(0), "mine", "1").await;

    // The port is in use (by the running member): a clear error, exit != 0.
    let mut twin = Cluster::new(&dir.path().join("twin"), 1);
    twin.clients[0] = c.clients[0];
    let out = run_to_end(twin.command(0));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("cannot listen") && err.contains("in use"),
        "{err}"
    );

    // Stop it; a member of another cluster (another token) given its data
    // directory refuses it, naming both cluster ids, and leaves it as it was.
    let mut p = procs.0[0].take().unwrap();
    p.kill().unwrap();
    p.wait().unwrap();
    let before = files(&c.data_dir(0));
    let mut other = Cluster::new(dir.path(), 1);
    other.clients = c.clients.clone();
    other.peers = c.peers.clone();
    other.token = "another-cluster".into();
    let out = run_to_end(other.command(0));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("belongs to cluster") && err.contains("refusing to start"),
        "{err}"
    );
    assert_eq!(
        files(&c.data_dir(0)),
        before,
        "the data directory was touched"
    );

    // A member of the other engine refuses the directory, and says why.
    let mut paxos = Cluster::new(dir.path(), 1);
    paxos.clients = c.clients.clone();
    paxos.peers = c.peers.clone();
    paxos.extra = vec!["--engine".into(), "multipaxos".into()];
    let out = run_to_end(paxos.command(0));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("raft engine"), "{err}");
    assert_eq!(
        files(&c.data_dir(0)),
        before,
        "the data directory was touched"
    );

    // What synod does not implement yet (TLS) is refused, by flag.
    // ETCD_* variables that no flag reads are warned about, as etcd does;
    // those a flag reads are not.
    let mut cmd = c.command(0);
    cmd.args(["--listen-metrics-urls", "https://127.0.0.1:1"]);
    cmd.env("ETCD_BCRYPT_COST", "10")
        .env("ETCD_NO_SUCH_FLAG", "1");
    let out = run_to_end(cmd);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--listen-metrics-urls") && err.contains("TLS"),
        "{err}"
    );
    assert!(
        err.contains("unrecognized environment variable ETCD_NO_SUCH_FLAG=1")
            && !err.contains("ETCD_BCRYPT_COST"),
        "{err}"
    );

    // A duration that is not one is refused by its flag.
    let mut cmd = c.command(0);
    cmd.args(["--experimental-watch-progress-notify-interval", "soon"]);
    let out = run_to_end(cmd);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--experimental-watch-progress-notify-interval") && err.contains("soon"),
        "{err}"
    );

    // The original member still starts on its data and serves it.
    procs.0[0] = Some(c.start(0));
    let deadline = Instant::now() + Duration::from_secs(30);
    while get(c.channel(0), "mine", false).await.as_deref() != Some(b"1".as_slice()) {
        assert!(Instant::now() < deadline, "member did not come back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every file under `dir` with its size and modification time.
fn files(dir: &Path) -> Vec<(PathBuf, u64, std::time::SystemTime)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let m = e.metadata().unwrap();
        if m.is_dir() {
            out.extend(files(&e.path()));
        } else {
            out.push((e.path(), m.len(), m.modified().unwrap()));
        }
    }
    out.sort();
    out
}

fn etcdctl(endpoint: &str, args: &[&str]) -> Option<String> {
    let out = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={endpoint}"))
        .arg("--command-timeout=15s")
        .args(args)
        .output();
    let Ok(out) = out else {
        assert!(
            std::env::var_os("SYNOD_REQUIRE_ETCDCTL").is_none(),
            "SYNOD_REQUIRE_ETCDCTL is set but etcdctl is not installed"
        );
        eprintln!("etcdctl not installed: skipping");
        return None;
    };
    assert!(
        out.status.success(),
        "etcdctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A table's column names and its rows, cell by cell.
fn table(out: &str) -> (Vec<String>, Vec<Vec<String>>) {
    let mut rows = out.lines().filter(|l| l.starts_with('|')).map(|l| {
        l.trim_matches('|')
            .split('|')
            .map(|c| c.trim().to_string())
            .collect()
    });
    let head = rows.next().unwrap_or_default();
    (head, rows.collect())
}

/// etcdctl's tables for three `synod serve` processes, read through one
/// `http://` endpoint: every member listed with its URLs, every member's
/// status and health reached through the URLs that MemberList gave.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_sees_the_processes_as_an_etcd_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let c = Cluster::new(dir.path(), 3);
    // Member 0 also serves its metrics on a port of their own.
    let metrics_port = free_port();
    let _procs = Reap(
        (0..3)
            .map(|i| {
                let mut cmd = c.command(i);
                if i == 0 {
                    let url = format!("http://127.0.0.1:{metrics_port}");
                    cmd.args(["--listen-metrics-urls", &url]);
                }
                Some(cmd.spawn().unwrap())
            })
            .collect(),
    );
    put_eventually(c.channel(0), "k", "v").await;
    let ep = format!("http://127.0.0.1:{}", c.clients[1]);
    // Each member learns the others' client URLs when they first connect.
    let deadline = Instant::now() + Duration::from_secs(20);
    let members = loop {
        let Some(out) = etcdctl(&ep, &["member", "list", "-w", "table"]) else {
            return;
        };
        let (head, rows) = table(&out);
        assert_eq!(
            head,
            [
                "ID",
                "STATUS",
                "NAME",
                "PEER ADDRS",
                "CLIENT ADDRS",
                "IS LEARNER"
            ]
        );
        if rows.iter().all(|r| !r[4].is_empty()) {
            break rows;
        }
        assert!(Instant::now() < deadline, "client URLs never known: {out}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(members.len(), 3);
    for (i, name) in c.names.iter().enumerate() {
        let row = members.iter().find(|r| &r[2] == name).unwrap();
        assert_eq!(row[1], "started");
        assert_eq!(row[3], format!("http://127.0.0.1:{}", c.peers[i]));
        assert_eq!(row[4], format!("http://127.0.0.1:{}", c.clients[i]));
        assert_eq!(row[5], "false");
    }

    let out = etcdctl(&ep, &["endpoint", "status", "--cluster", "-w", "table"]).unwrap();
    let (head, rows) = table(&out);
    assert_eq!(
        head,
        [
            "ENDPOINT",
            "ID",
            "VERSION",
            "DB SIZE",
            "IS LEADER",
            "IS LEARNER",
            "RAFT TERM",
            "RAFT INDEX",
            "RAFT APPLIED INDEX",
            "ERRORS"
        ]
    );
    assert_eq!(rows.len(), 3, "{out}");
    assert_eq!(rows.iter().filter(|r| r[4] == "true").count(), 1, "{out}");
    let mut ids: Vec<&str> = rows.iter().map(|r| r[1].as_str()).collect();
    let mut listed: Vec<&str> = members.iter().map(|r| r[0].as_str()).collect();
    ids.sort_unstable();
    listed.sort_unstable();
    assert_eq!(ids, listed, "status and member list name the same members");

    let out = etcdctl(&ep, &["endpoint", "health", "--cluster", "-w", "table"]).unwrap();
    let (head, rows) = table(&out);
    assert_eq!(head, ["ENDPOINT", "HEALTH", "TOOK", "ERROR"]);
    assert_eq!(rows.len(), 3, "{out}");
    assert!(rows.iter().all(|r| r[1] == "true"), "{out}");

    // After a write load, every member's digest of the history at the same
    // revision is the same: the operator's cross-member consistency check.
    let mut last = 0;
    for i in 0..30 {
        let r = put_eventually(c.channel(i % 3), &format!("load/{i}"), &"x".repeat(i)).await;
        last = r.header.unwrap().revision;
    }
    for i in 0..3 {
        let deadline = Instant::now() + Duration::from_secs(20);
        while get(c.channel(i), "load/29", true).await.is_none() {
            assert!(
                Instant::now() < deadline,
                "member {i} never applied the load"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let rev = last.to_string();
    let out = etcdctl(&ep, &["endpoint", "hashkv", "--cluster", "--rev", &rev]).unwrap();
    let hashes: Vec<&str> = out.lines().filter_map(|l| l.split(", ").nth(1)).collect();
    assert_eq!(hashes.len(), 3, "{out}");
    assert!(hashes.iter().all(|h| *h == hashes[0]), "{out}");
    // A different revision hashes differently.
    let before = (last - 1).to_string();
    let out = etcdctl(&ep, &["endpoint", "hashkv", "--rev", &before]).unwrap();
    assert_ne!(
        out.split(", ").nth(1).map(str::trim),
        Some(hashes[0]),
        "{out}"
    );
    // move-leader hands leadership to the member named, as etcd does; an id
    // that is no member is refused with etcd's error.
    let all = (0..3)
        .map(|i| format!("127.0.0.1:{}", c.clients[i]))
        .collect::<Vec<_>>()
        .join(",");
    let l = leader(&c, &[0, 1, 2]).await;
    let target = (l + 1) % 3;
    let id = status(c.channel(target))
        .await
        .unwrap()
        .header
        .unwrap()
        .member_id;
    let out = etcdctl(&all, &["move-leader", &format!("{id:x}")]).unwrap();
    assert!(out.contains("Leadership transferred from"), "{out}");
    assert_eq!(leader(&c, &[0, 1, 2]).await, target);
    let bad = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={all}"))
        .args(["move-leader", "1234"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("etcdserver: bad leader transferee"), "{err}");

    // The metrics port answers /metrics and /health, no gRPC; a leader's
    // heartbeats have timed the round trip to its peers.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let l = leader(&c, &[0, 1, 2]).await;
        let text = http_get(c.clients[l], "/metrics");
        assert!(text.contains("etcd_server_has_leader 1"), "{text}");
        if text.contains("etcd_network_peer_round_trip_time_seconds_count{To=") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no peer round trip timed: {text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let text = http_get(metrics_port, "/metrics");
    assert!(text.contains("etcd_server_has_leader 1"), "{text}");
    assert!(http_get(metrics_port, "/health").contains(r#"{"health":"true"}"#));
    assert!(http_get(metrics_port, "/version").contains("etcdserver"));

    // Defragment has nothing to reclaim and says it finished, per member.
    let out = etcdctl(&ep, &["defrag", "--cluster"]).unwrap();
    assert_eq!(
        out.matches("Finished defragmenting etcd member").count(),
        3,
        "{out}"
    );
}

/// Whether etcdctl is missing, so the test skips (a failure under CI's
/// `SYNOD_REQUIRE_ETCDCTL`).
fn etcdctl_missing() -> bool {
    if Command::new("etcdctl").arg("version").output().is_ok() {
        return false;
    }
    assert!(
        std::env::var_os("SYNOD_REQUIRE_ETCDCTL").is_none(),
        "SYNOD_REQUIRE_ETCDCTL is set but etcdctl is not installed"
    );
    eprintln!("etcdctl not installed: skipping");
    true
}

/// etcdctl output, or its error text, whether it succeeded or not (`None`
/// when etcdctl is not installed).
fn etcdctl_any(endpoint: &str, args: &[&str]) -> Option<(bool, String)> {
    let out = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={endpoint}"))
        .arg("--command-timeout=15s")
        .args(args)
        .output()
        .ok()?;
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    Some((out.status.success(), text))
}

/// The id of the member whose peer URL ends in `:port`, from `member list`.
fn member_id_at(endpoint: &str, port: u16) -> String {
    let out = etcdctl(endpoint, &["member", "list"]).unwrap();
    out.lines()
        .find(|l| l.contains(&format!(":{port},")))
        .and_then(|l| l.split(", ").next())
        .unwrap_or_else(|| panic!("no member at port {port}: {out}"))
        .to_string()
}

/// Waits for a child process to end by itself; its exit status and stderr.
fn ends_within(child: &mut Child, limit: Duration) -> (std::process::ExitStatus, String) {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                use std::io::Read;
                let _ = e.read_to_string(&mut err);
            }
            return (status, err);
        }
        assert!(Instant::now() < deadline, "the process did not stop");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `etcdctl member add ARGS`, again while the answer is etcd's
/// `--strict-reconfig-check` refusal of a cluster whose links are younger
/// than 5 s; its output.
fn add_when_healthy(ep: &str, args: &[&str]) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (ok, out) = etcdctl_any(ep, &[&["member", "add"], args].concat()).unwrap();
        if ok {
            return out;
        }
        assert!(out.contains("etcdserver: unhealthy cluster"), "{out}");
        assert!(Instant::now() < deadline, "never healthy: {out}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// etcd's `--strict-reconfig-check` (on by default), answer for answer as
/// etcd 3.4.23 gave them for the same steps: no change until every voter
/// has been connected for 5 s, no member added while one is down, a live
/// voter removed only if the started ones still make a quorum, a member
/// that never started removed at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_reconfig_check_refuses_as_etcd_does() {
    if Command::new("etcdctl").arg("version").output().is_err() {
        assert!(std::env::var_os("SYNOD_REQUIRE_ETCDCTL").is_none());
        eprintln!("etcdctl not installed: skipping");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let c = Cluster::new(dir.path(), 3);
    let started = Instant::now();
    let mut procs = Reap((0..3).map(|i| Some(c.start(i))).collect());
    put_eventually(c.channel(0), "k", "v").await;
    let ep = format!("http://127.0.0.1:{}", c.clients[0]);
    let url = |port: u16| format!("http://127.0.0.1:{port}");
    let refused = |args: &[&str], why: &str| {
        let (ok, out) = etcdctl_any(&ep, args).unwrap();
        assert!(!ok && out.contains(why), "{args:?}: {out}");
    };
    // No link can be older than its process.
    if started.elapsed() < Duration::from_secs(4) {
        refused(
            &[
                "member",
                "add",
                "l",
                "--learner",
                "--peer-urls",
                &url(free_port()),
            ],
            "etcdserver: unhealthy cluster",
        );
    }
    let x = url(free_port());
    let out = add_when_healthy(&ep, &["x", "--peer-urls", &x]);
    assert!(out.contains("added to cluster"), "{out}");
    // x never starts: nothing more is added, whatever else is wrong.
    refused(
        &["member", "add", "y", "--peer-urls", &url(free_port())],
        "etcdserver: unhealthy cluster",
    );
    refused(
        &[
            "member",
            "add",
            "w",
            "--learner",
            "--peer-urls",
            &url(c.peers[1]),
        ],
        "etcdserver: unhealthy cluster",
    );
    // Three of four voters started: infra2 may go, and stops.
    let id2 = member_id_at(&ep, c.peers[1]);
    let out = etcdctl(&ep, &["member", "remove", &id2]).unwrap();
    assert!(out.contains("removed from cluster"), "{out}");
    let (status, _) = ends_within(procs.0[1].as_mut().unwrap(), Duration::from_secs(20));
    assert!(!status.success());
    // infra1, infra3 and x: two started of three.
    refused(
        &["member", "add", "x2", "--peer-urls", &url(free_port())],
        "etcdserver: re-configuration failed due to not enough started members",
    );
    let id3 = member_id_at(&ep, c.peers[2]);
    refused(
        &["member", "remove", &id3],
        "etcdserver: re-configuration failed due to not enough started members",
    );
    let xid = member_id_at(&ep, x.rsplit(':').next().unwrap().parse().unwrap());
    let out = etcdctl(&ep, &["member", "remove", &xid]).unwrap();
    assert!(out.contains("removed from cluster"), "{out}");
    refused(&["member", "remove", &id2], "etcdserver: member not found");
    put_eventually(c.channel(2), "after", "1").await;
    assert_eq!(
        etcdctl(&ep, &["member", "list"]).unwrap().lines().count(),
        2
    );
}

/// Membership through etcdctl, as an operator changes an etcd cluster: a
/// fourth process added as a learner catches up from a compacted log (by a
/// snapshot streamed in chunks), is promoted, and is removed, after which
/// it stops by itself; etcd's refusals word for word; and removing the
/// leader hands leadership over first, with no write lost.
/// The `.snap` files under `dir`, at any depth.
fn snap_files(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = e.path();
        if path.is_dir() {
            found.extend(snap_files(&path));
        } else if path.extension().is_some_and(|x| x == "snap") {
            found.push(path);
        }
    }
    found
}

/// With the defaults no snapshot is ever due after a few writes, but the
/// members drop the commands of the entries all three hold: a learner
/// added then needs entries nobody keeps whole, and the leader takes a
/// snapshot for it (`RaftNode::wants_snapshot`), which it catches up from.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_added_after_the_commands_left_gets_a_snapshot_taken_for_it() {
    if etcdctl_missing() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut c = Cluster::new(dir.path(), 4);
    c.initial = 3;
    let mut procs = Reap((0..3).map(|i| Some(c.start(i))).collect());
    for i in 0..50 {
        put_eventually(c.channel(i % 3), &format!("k{i}"), "v").await;
    }
    assert!(
        (0..3).all(|i| snap_files(&c.data_dir(i)).is_empty()),
        "no snapshot is due after 50 writes"
    );
    let ep = format!("http://127.0.0.1:{}", c.clients[0]);
    let peer4 = format!("http://127.0.0.1:{}", c.peers[3]);
    let out = add_when_healthy(&ep, &["infra4", "--peer-urls", &peer4, "--learner"]);
    assert!(out.contains("added to cluster"), "{out}");
    procs.0.push(Some(c.start(3)));
    let deadline = Instant::now() + Duration::from_secs(30);
    while get(c.channel(3), "k49", true).await.as_deref() != Some(b"v".as_slice()) {
        assert!(Instant::now() < deadline, "the learner never caught up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        !snap_files(&c.data_dir(3)).is_empty(),
        "the learner caught up without a snapshot"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_adds_promotes_and_removes_members() {
    if etcdctl_missing() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut c = Cluster::new(dir.path(), 4);
    c.initial = 3;
    // Snapshots every 20 entries: the log is compacted before the fourth
    // member arrives, so it can only catch up from a snapshot, which at
    // 1.5 MB travels in two chunks.
    c.extra = vec!["--snapshot-count".into(), "20".into()];
    let mut procs = Reap((0..3).map(|i| Some(c.start(i))).collect());
    let big = "x".repeat(15_000);
    for i in 0..100 {
        put_eventually(c.channel(i % 3), &format!("k{i}"), &big).await;
    }
    let ep = format!("http://127.0.0.1:{}", c.clients[0]);
    let peer4 = format!("http://127.0.0.1:{}", c.peers[3]);

    // --strict-reconfig-check: refused until every voter has been
    // connected for 5 s.
    let out = add_when_healthy(&ep, &["infra4", "--peer-urls", &peer4, "--learner"]);
    assert!(out.contains("added to cluster"), "{out}");
    assert!(
        out.contains("ETCD_INITIAL_CLUSTER_STATE=\"existing\""),
        "{out}"
    );
    let (ok, err) = etcdctl_any(&ep, &["member", "add", "again", "--peer-urls", &peer4]).unwrap();
    assert!(
        !ok && err.contains("etcdserver: Peer URLs already exists"),
        "{err}"
    );

    procs.0.push(Some(c.start(3)));
    let deadline = Instant::now() + Duration::from_secs(30);
    while get(c.channel(3), "k99", true).await.as_deref() != Some(big.as_bytes()) {
        assert!(Instant::now() < deadline, "the learner never caught up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let id4 = member_id_at(&ep, c.peers[3]);
    // The learner published its name and client URL through the log.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = etcdctl(&ep, &["member", "list", "-w", "table"]).unwrap();
        let (_, rows) = table(&out);
        assert_eq!(rows.len(), 4, "{out}");
        let row = rows.iter().find(|r| r[0] == id4).unwrap();
        if row[2] == "infra4" {
            assert_eq!(row[1], "started");
            assert_eq!(row[4], format!("http://127.0.0.1:{}", c.clients[3]));
            assert_eq!(row[5], "true", "{out}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the learner never published: {out}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (ok, out) = etcdctl_any(&ep, &["member", "promote", &id4]).unwrap();
        if ok {
            assert!(out.contains("promoted in cluster"), "{out}");
            break;
        }
        assert!(out.contains("in sync with leader"), "{out}");
        assert!(Instant::now() < deadline, "never promoted: {out}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (ok, err) = etcdctl_any(&ep, &["member", "promote", &id4]).unwrap();
    assert!(
        !ok && err.contains("etcdserver: can only promote a learner member"),
        "{err}"
    );
    let out = etcdctl(&ep, &["endpoint", "status", "--cluster", "-w", "table"]).unwrap();
    let (_, rows) = table(&out);
    assert_eq!(rows.len(), 4, "{out}");
    assert!(
        rows.iter().all(|r| r[5] == "false"),
        "no learner left: {out}"
    );
    put_eventually(c.channel(3), "through-the-fourth", "1").await;

    // MemberUpdate records new peer URLs (here the same), refuses an
    // unknown id and URLs another member has.
    let out = etcdctl(&ep, &["member", "update", &id4, "--peer-urls", &peer4]).unwrap();
    assert!(out.contains("updated in cluster"), "{out}");
    let (ok, err) = etcdctl_any(&ep, &["member", "update", "1234", "--peer-urls", &peer4]).unwrap();
    assert!(!ok && err.contains("etcdserver: member not found"), "{err}");
    let peer1 = format!("http://127.0.0.1:{}", c.peers[0]);
    let (ok, err) = etcdctl_any(&ep, &["member", "update", &id4, "--peer-urls", &peer1]).unwrap();
    assert!(
        !ok && err.contains("etcdserver: Peer URLs already exists"),
        "{err}"
    );
    let (ok, err) = etcdctl_any(&ep, &["member", "remove", "1234"]).unwrap();
    assert!(!ok && err.contains("etcdserver: member not found"), "{err}");
    let out = etcdctl(&ep, &["member", "remove", &id4]).unwrap();
    assert!(out.contains("removed from cluster"), "{out}");
    let mut fourth = procs.0[3].take().unwrap();
    let (status, err) = ends_within(&mut fourth, Duration::from_secs(20));
    assert!(!status.success());
    assert!(err.contains("removed from the cluster"), "{err}");

    // Removing the leader: it hands leadership over, then leaves and stops.
    let l = leader(&c, &[0, 1, 2]).await;
    let all = (0..3)
        .map(|i| format!("http://127.0.0.1:{}", c.clients[i]))
        .collect::<Vec<_>>()
        .join(",");
    let lid = member_id_at(&all, c.peers[l]);
    let out = etcdctl(&all, &["member", "remove", &lid]).unwrap();
    assert!(out.contains("removed from cluster"), "{out}");
    let mut old = procs.0[l].take().unwrap();
    let (status, err) = ends_within(&mut old, Duration::from_secs(20));
    assert!(!status.success());
    assert!(err.contains("removed from the cluster"), "{err}");
    let rest: Vec<usize> = (0..3).filter(|i| *i != l).collect();
    let after = put_eventually(c.channel(rest[0]), "after-removal", "1").await;
    assert!(after.header.unwrap().revision > 100);
    for &i in &rest {
        assert_eq!(
            get(c.channel(i), "through-the-fourth", false)
                .await
                .as_deref(),
            Some(b"1".as_slice())
        );
        assert_eq!(
            get(c.channel(i), "k0", false).await.as_deref(),
            Some(big.as_bytes())
        );
    }
    let out = etcdctl(
        &format!("http://127.0.0.1:{}", c.clients[rest[0]]),
        &["member", "list"],
    )
    .unwrap();
    assert_eq!(out.lines().count(), 2, "{out}");
}

/// `etcdctl snapshot save` from a member, `synod snapshot status` on the
/// file, then `synod snapshot restore` into a new single-member cluster that
/// serves the same keys and leases at the same revision; a damaged file is
/// refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saved_snapshot_restores_into_a_new_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let c = Cluster::new(dir.path(), 3);
    let mut procs = Reap((0..3).map(|i| Some(c.start(i))).collect());
    let mut last = 0;
    for i in 0..50 {
        last = put_eventually(c.channel(i % 3), &format!("k{i}"), &format!("v{i}"))
            .await
            .header
            .unwrap()
            .revision;
    }
    let ep = format!("http://127.0.0.1:{}", c.clients[1]);
    let Some(out) = etcdctl(&ep, &["lease", "grant", "600"]) else {
        return;
    };
    let lease = out.split_whitespace().nth(1).unwrap().to_string();
    let file = dir.path().join("snap.db");
    let file_s = file.to_str().unwrap();
    etcdctl(&ep, &["snapshot", "save", file_s]).unwrap();

    let synod = env!("CARGO_BIN_EXE_synod");
    let out = Command::new(synod)
        .args(["snapshot", "status", file_s, "-w", "json"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(
        printed.contains(&format!("\"revision\":{last}")),
        "{printed}"
    );
    assert!(printed.contains("\"totalKey\":50"), "{printed}");
    for p in procs.0.iter_mut().flatten() {
        p.kill().unwrap();
    }

    // Restored with its WAL in a directory of its own (`--wal-dir`, as
    // etcdctl's restore takes it), and served so.
    let mut solo = Cluster::new(&dir.path().join("restored"), 1);
    solo.names = vec!["solo".into()];
    solo.token = "restored-1".into();
    let wal_dir = dir.path().join("wal-disk");
    solo.extra = vec![format!("--wal-dir={}", wal_dir.display())];
    let peer = format!("http://127.0.0.1:{}", solo.peers[0]);
    let out = Command::new(synod)
        .args(["snapshot", "restore", file_s, "--name", "solo"])
        .args(["--initial-cluster", &format!("solo={peer}")])
        .args(["--initial-advertise-peer-urls", &peer])
        .args(["--initial-cluster-token", "restored-1"])
        .arg("--data-dir")
        .arg(solo.data_dir(0))
        .args(&solo.extra)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    procs.0.push(Some(solo.start(0)));
    let deadline = Instant::now() + Duration::from_secs(20);
    while get(solo.channel(0), "k49", false).await.as_deref() != Some(b"v49".as_slice()) {
        assert!(
            Instant::now() < deadline,
            "the restored member never served"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let h = status(solo.channel(0)).await.unwrap().header.unwrap();
    assert_eq!(h.revision, last);
    let solo_ep = format!("http://127.0.0.1:{}", solo.clients[0]);
    let leases = etcdctl(&solo_ep, &["lease", "list"]).unwrap();
    assert!(leases.contains(&lease), "{leases}");
    let members = etcdctl(&solo_ep, &["member", "list"]).unwrap();
    assert_eq!(members.lines().count(), 1, "{members}");
    let segments = std::fs::read_dir(&wal_dir)
        .unwrap()
        .filter(|e| e.as_ref().unwrap().path().extension() == Some("wal".as_ref()))
        .count();
    assert!(segments > 0, "no WAL segment in --wal-dir");
    let link = std::fs::symlink_metadata(solo.data_dir(0).join("wal")).unwrap();
    assert!(
        link.file_type().is_symlink(),
        "the data dir's wal is no link"
    );

    // A file cut short is refused, by status and by restore alike.
    let bytes = std::fs::read(&file).unwrap();
    let cut = dir.path().join("cut.db");
    std::fs::write(&cut, &bytes[..bytes.len() - 100]).unwrap();
    let out = Command::new(synod)
        .args(["snapshot", "status"])
        .arg(&cut)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("SHA-256 mismatch"));
}

/// Asks `GET path` over HTTP/1.1 and returns the status line and body.
fn http_get(port: u16, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

/// `--quota-backend-bytes` as etcd: past it the NOSPACE alarm is raised
/// (listed, in Status's errors, `/health` false), writes that take space are
/// refused with etcd's message while reads and deletes go on, and after a
/// compaction `alarm disarm` lets writes in again. Each line checked here was
/// run against etcd 3.4 first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_quota_raises_nospace_until_disarmed() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = Cluster::new(dir.path(), 1);
    c.extra = vec!["--quota-backend-bytes".into(), "200000".into()];
    let _procs = Reap(vec![Some(c.start(0))]);
    put_eventually(c.channel(0), "small", "x").await;
    let big = "v".repeat(10_000);
    let mut refused = None;
    for i in 0..40 {
        if let Err(e) = put(c.channel(0), &format!("big{}", i % 5), &big).await {
            refused = Some(e);
            break;
        }
    }
    let e = refused.expect("the quota never refused a write");
    assert_eq!(e.code(), tonic::Code::ResourceExhausted);
    assert_eq!(e.message(), "etcdserver: mvcc: database space exceeded");
    let ep = format!("http://127.0.0.1:{}", c.clients[0]);
    let Some(alarms) = etcdctl(&ep, &["alarm", "list"]) else {
        return;
    };
    let me = status(c.channel(0)).await.unwrap();
    let line = format!("memberID:{} alarm:NOSPACE ", me.header.unwrap().member_id);
    assert_eq!(alarms.trim_end_matches('\n'), line);
    assert_eq!(me.errors, vec![line.clone()]);
    assert!(http_get(c.clients[0], "/health").contains(r#"{"health":"false"}"#));

    // Reads and deletes are still served.
    assert_eq!(
        get(c.channel(0), "big1", false).await.as_deref(),
        Some(big.as_bytes())
    );
    etcdctl(&ep, &["del", "big0"]).unwrap();
    let rev = status(c.channel(0)).await.unwrap().header.unwrap().revision;
    etcdctl(&ep, &["compact", &rev.to_string()]).unwrap();
    let out = etcdctl(&ep, &["alarm", "disarm"]).unwrap();
    assert_eq!(out.trim_end_matches('\n'), line);
    assert_eq!(etcdctl(&ep, &["alarm", "list"]).unwrap(), "");
    put(c.channel(0), "after", "disarm").await.unwrap();
    assert!(http_get(c.clients[0], "/health").contains(r#"{"health":"true"}"#));
}

/// `--auto-compaction-mode periodic --auto-compaction-retention 1s`: the
/// leader compacts the history older than about a second by itself, as
/// etcd's periodic compactor does; reads at a compacted revision get etcd's
/// error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn periodic_auto_compaction_drops_old_history() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = Cluster::new(dir.path(), 1);
    c.extra = ["--auto-compaction-mode", "periodic"]
        .into_iter()
        .chain(["--auto-compaction-retention", "1s"])
        .map(String::from)
        .collect();
    let _procs = Reap(vec![Some(c.start(0))]);
    put_eventually(c.channel(0), "k", "first").await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        put(c.channel(0), "k", "later").await.unwrap();
        let mut kv = pb::kv_client::KvClient::new(c.channel(0));
        let old = pb::RangeRequest {
            key: "k".into(),
            revision: 2,
            ..Default::default()
        };
        match kv.range(old).await {
            Err(e) => {
                assert_eq!(e.code(), tonic::Code::OutOfRange);
                assert_eq!(
                    e.message(),
                    "etcdserver: mvcc: required revision has been compacted"
                );
                break;
            }
            Ok(_) => {
                assert!(Instant::now() < deadline, "never compacted");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    // The latest value is never compacted away.
    assert_eq!(
        get(c.channel(0), "k", false).await.as_deref(),
        Some(b"later".as_slice())
    );
}

/// Certificates for a TLS test, written as PEM files into a directory: a CA,
/// a member certificate for 127.0.0.1 and localhost, client certificates
/// whose common names are `root` and `alice`, and a client certificate from
/// another CA.
struct Pki {
    dir: PathBuf,
}

impl Pki {
    fn make(dir: &Path) -> Pki {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
        let ca = |name: &str| {
            let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
            p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            p.distinguished_name.push(DnType::CommonName, name);
            let key = KeyPair::generate().unwrap();
            (p.self_signed(&key).unwrap(), key)
        };
        std::fs::create_dir_all(dir).unwrap();
        let write = |name: &str, text: String| std::fs::write(dir.join(name), text).unwrap();
        let (ours, ours_key) = ca("synod test CA");
        let (theirs, theirs_key) = ca("another CA");
        write("ca.pem", ours.pem());
        let leaf =
            |file: &str, cn: &str, sans: Vec<String>, by: &rcgen::Certificate, by_key: &KeyPair| {
                let mut p = CertificateParams::new(sans).unwrap();
                p.distinguished_name.push(DnType::CommonName, cn);
                let key = KeyPair::generate().unwrap();
                let cert = p.signed_by(&key, by, by_key).unwrap();
                write(&format!("{file}.pem"), cert.pem());
                write(&format!("{file}-key.pem"), key.serialize_pem());
            };
        let hosts = vec!["127.0.0.1".to_string(), "localhost".to_string()];
        leaf("member", "member", hosts, &ours, &ours_key);
        leaf(
            "root",
            "root",
            vec!["root.example.com".into()],
            &ours,
            &ours_key,
        );
        leaf("alice", "alice", Vec::new(), &ours, &ours_key);
        leaf("stranger", "root", Vec::new(), &theirs, &theirs_key);
        Pki {
            dir: dir.to_path_buf(),
        }
    }

    fn path(&self, file: &str) -> String {
        self.dir.join(file).display().to_string()
    }

    /// etcdctl's flags to present client certificate `who` (and trust our CA).
    fn as_client(&self, who: &str) -> Vec<String> {
        vec![
            format!("--cacert={}", self.path("ca.pem")),
            format!("--cert={}", self.path(&format!("{who}.pem"))),
            format!("--key={}", self.path(&format!("{who}-key.pem"))),
        ]
    }
}

/// Three members that talk to each other and to their clients over TLS
/// only, with certificates demanded on both sides: etcdctl with a
/// certificate from the trusted CA reads and writes through every member;
/// without one, or with another CA's, it is refused. With auth on, the
/// certificate's common name is the user.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_and_peers_over_tls_with_certificates() {
    if etcdctl_missing() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::make(&dir.path().join("pki"));
    let mut c = Cluster::new(dir.path(), 3);
    c.client_scheme = "https";
    c.peer_scheme = "https";
    c.extra = vec![
        format!("--cert-file={}", pki.path("member.pem")),
        format!("--key-file={}", pki.path("member-key.pem")),
        "--client-cert-auth".into(),
        format!("--trusted-ca-file={}", pki.path("ca.pem")),
        format!("--peer-cert-file={}", pki.path("member.pem")),
        format!("--peer-key-file={}", pki.path("member-key.pem")),
        "--peer-client-cert-auth".into(),
        format!("--peer-trusted-ca-file={}", pki.path("ca.pem")),
        // Every member's certificate names "member": the rule admits them.
        "--peer-cert-allowed-cn=member".into(),
    ];
    let _procs = Reap((0..3).map(|i| Some(c.start(i))).collect());
    let ep = |i: usize| format!("https://127.0.0.1:{}", c.clients[i]);
    let run = |i: usize, who: &str, args: &[&str]| {
        let mut all: Vec<String> = pki.as_client(who);
        all.extend(args.iter().map(|a| a.to_string()));
        let all: Vec<&str> = all.iter().map(String::as_str).collect();
        etcdctl_any(&ep(i), &all).unwrap()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (ok, out) = run(0, "root", &["put", "k", "v"]);
        if ok {
            assert_eq!(out, "OK\n");
            break;
        }
        assert!(Instant::now() < deadline, "no put over TLS: {out}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for i in 0..3 {
        let (ok, out) = run(i, "root", &["get", "k"]);
        assert!(ok && out == "k\nv\n", "member {i}: {out}");
    }

    // No client certificate, or one from another CA: the handshake fails.
    let ca_only = format!("--cacert={}", pki.path("ca.pem"));
    let (ok, out) = etcdctl_any(&ep(1), &[&ca_only, "--command-timeout=2s", "get", "k"]).unwrap();
    assert!(!ok, "read without a client certificate: {out}");
    let (ok, out) = run(2, "stranger", &["--command-timeout=2s", "get", "k"]);
    assert!(!ok, "read with another CA's certificate: {out}");

    // Auth on: the common name is the user.
    for args in [
        &["user", "add", "root:rootpw"][..],
        &["role", "add", "root"],
        &["user", "grant-role", "root", "root"],
        &["user", "add", "alice:apw"],
        &["auth", "enable"],
    ] {
        let (ok, out) = run(0, "root", args);
        assert!(ok, "{args:?}: {out}");
    }
    let (ok, out) = run(1, "root", &["put", "k", "by-root"]);
    assert!(ok, "root's certificate, no password: {out}");
    let (ok, out) = run(2, "alice", &["put", "k", "by-alice"]);
    assert!(
        !ok && out.contains("etcdserver: permission denied"),
        "alice's certificate: {out}"
    );
    let (ok, out) = run(0, "root", &["auth", "disable"]);
    assert!(ok, "{out}");
}

/// `--client-cert-allowed-hostname`: of the certificates the trusted CA
/// signed, only those valid for the host name given get in.
#[tokio::test]
async fn only_client_certificates_for_the_allowed_host_name_get_in() {
    if etcdctl_missing() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::make(&dir.path().join("pki"));
    let mut c = Cluster::new(dir.path(), 1);
    c.client_scheme = "https";
    c.extra = vec![
        format!("--cert-file={}", pki.path("member.pem")),
        format!("--key-file={}", pki.path("member-key.pem")),
        "--client-cert-auth".into(),
        format!("--trusted-ca-file={}", pki.path("ca.pem")),
        "--client-cert-allowed-hostname=root.example.com".into(),
    ];
    let _procs = Reap(vec![Some(c.start(0))]);
    let ep = format!("https://127.0.0.1:{}", c.clients[0]);
    let run = |who: &str, args: &[&str]| {
        let mut all: Vec<String> = pki.as_client(who);
        all.extend(args.iter().map(|a| a.to_string()));
        let all: Vec<&str> = all.iter().map(String::as_str).collect();
        etcdctl_any(&ep, &all).unwrap()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (ok, out) = run("root", &["put", "k", "v"]);
        if ok {
            assert_eq!(out, "OK\n");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no put with root's certificate: {out}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Signed by the same CA, but valid for no such name.
    let (ok, out) = run("alice", &["--command-timeout=2s", "get", "k"]);
    assert!(!ok, "alice's certificate got in: {out}");
    let (ok, out) = run("root", &["get", "k"]);
    assert!(ok && out == "k\nv\n", "{out}");
}

/// etcd's YAML configuration file starts a member on its own: the command
/// line and the ETCD_* variables are ignored, as etcd ignores them, and
/// settings that have no effect on synod are said to have none.
#[tokio::test]
async fn a_member_starts_from_etcds_configuration_file() {
    let dir = tempfile::tempdir().unwrap();
    let c = Cluster::new(dir.path(), 1);
    let (client, peer) = (c.clients[0], c.peers[0]);
    let file = dir.path().join("etcd.conf.yml");
    let data = dir.path().join("from-file.etcd");
    std::fs::write(
        &file,
        format!(
            "name: 'from-file'\n\
             data-dir: {}\n\
             wal-dir:\n\
             listen-client-urls: http://127.0.0.1:{client}\n\
             advertise-client-urls: http://127.0.0.1:{client}\n\
             listen-peer-urls: http://127.0.0.1:{peer}\n\
             initial-advertise-peer-urls: http://127.0.0.1:{peer}\n\
             initial-cluster: from-file=http://127.0.0.1:{peer}\n\
             max-wals: 5\n\
             enable-v2: true\n\
             client-transport-security:\n  client-cert-auth: false\n\
             log-outputs: [stderr]\n",
            data.display()
        ),
    )
    .unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_synod"));
    cmd.args(["serve", "--config-file"])
        .arg(&file)
        .args(["--name", "from-the-command-line"])
        .env("ETCD_NAME", "from-the-environment")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut procs = Reap(vec![Some(cmd.spawn().unwrap())]);
    put_eventually(c.channel(0), "k", "v").await;
    let members = pb::cluster_client::ClusterClient::new(c.channel(0))
        .member_list(pb::MemberListRequest::default())
        .await
        .unwrap()
        .into_inner()
        .members;
    let names: Vec<&str> = members.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(names, ["from-file"]);
    assert!(data.is_dir(), "the data directory is the file's");
    let mut p = procs.0[0].take().unwrap();
    p.kill().unwrap();
    let out = p.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--enable-v2 has no effect") && !err.contains("--max-wals"),
        "{err}"
    );
}
