//! etcdctl against a three-member cluster: what `synod up` serves. Skipped
//! when etcdctl is missing, unless `SYNOD_REQUIRE_ETCDCTL` is set (CI).

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};
use synod_server::cluster::{start_cluster, ClusterSpec};

fn etcdctl(endpoints: &str, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(std::env::var("ETCDCTL").unwrap_or_else(|_| "etcdctl".into()))
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={endpoints}"))
        .arg("--command-timeout=15s")
        .args(args)
        .output()
        .expect("etcdctl runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

mod common;
use common::free_port;

/// Whether etcdctl can run; false means skip (fails instead under CI's
/// `SYNOD_REQUIRE_ETCDCTL`).
fn etcdctl_installed() -> bool {
    let installed = Command::new("etcdctl")
        .arg("version")
        .env("ETCDCTL_API", "3")
        .output()
        .is_ok_and(|o| o.status.success());
    if !installed && std::env::var_os("ETCDCTL").is_none() {
        assert!(
            std::env::var_os("SYNOD_REQUIRE_ETCDCTL").is_none(),
            "SYNOD_REQUIRE_ETCDCTL is set but etcdctl is not installed"
        );
        eprintln!("skipped: etcdctl not installed (Debian: apt-get install etcd-client)");
        return false;
    }
    true
}

/// A long-running etcdctl (`lock`, `elect`) whose output lines arrive on a
/// channel, read on a thread, so a line that never comes times out.
struct Running {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Running {
    fn start(endpoints: &str, args: &[&str]) -> Running {
        let mut child = Command::new(std::env::var("ETCDCTL").unwrap_or_else(|_| "etcdctl".into()))
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={endpoints}"))
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("etcdctl runs");
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                if tx.send(line.unwrap_or_default()).is_err() {
                    return;
                }
            }
        });
        Running { child, lines }
    }

    /// The next line, or a panic naming what was awaited.
    fn line(&self, what: &str) -> String {
        self.lines
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|_| panic!("etcdctl never printed {what}"))
    }

    /// Nothing printed for `d`: the command is still waiting.
    fn quiet_for(&self, d: Duration) -> bool {
        self.lines.recv_timeout(d).is_err()
    }
}

impl Running {
    /// Ctrl-C, as a user stops it.
    fn interrupt(&self) {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill").args(["-INT", &pid]).status();
        assert!(sent.is_ok_and(|s| s.success()), "SIGINT to etcdctl {pid}");
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn etcdctl_lock_and_elect_against_a_replicated_cluster() {
    if !etcdctl_installed() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let ports: Vec<(u16, u16)> = (0..3).map(|_| (free_port(), free_port())).collect();
    let spec = ClusterSpec::local(dir.path().to_path_buf(), &ports);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let members = runtime.block_on(start_cluster(&spec)).unwrap();
    let eps: Vec<String> = spec.members.iter().map(|m| m.client.to_string()).collect();
    let all = eps.join(",");
    let (ok, _, err) = etcdctl(&all, &["put", "ready", "1"]);
    assert!(ok, "{err}");

    // Two holders of one lock through different members: the second waits
    // until the first's process dies and its lease (3 s) runs out.
    let first = Running::start(&eps[0], &["lock", "--ttl=3", "jobs"]);
    let key = first.line("the first holder's key");
    assert!(key.starts_with("jobs/"), "{key}");
    let second = Running::start(
        &eps[1],
        &["lock", "--ttl=3", "jobs", "echo", "second holds it"],
    );
    assert!(
        second.quiet_for(Duration::from_millis(1500)),
        "the second holder got the lock while the first held it"
    );
    let killed = Instant::now();
    drop(first);
    assert_eq!(
        second.line("the second holder's command"),
        "second holds it"
    );
    let waited = killed.elapsed();
    // Released by the lease running out (keep-alives every second leave at
    // least ~2 s of it), not at once.
    assert!(
        waited >= Duration::from_secs(1),
        "released {waited:?} after the kill: not by lease expiry"
    );
    let (ok, out, err) = etcdctl(&all, &["get", "jobs/", "--prefix", "--keys-only"]);
    assert!(ok && out.trim().is_empty(), "lock keys left: {out}{err}");

    // An election: the leader proclaims, an observer follows, a second
    // candidate takes over when the leader is interrupted (etcdctl 3.4's
    // elect has no --ttl: its 60 s session resigns on SIGINT).
    let leader = Running::start(&eps[0], &["elect", "pilot", "alice"]);
    let lkey = leader.line("the leader's key");
    assert!(lkey.starts_with("pilot/"), "{lkey}");
    assert_eq!(leader.line("the leader's proposal"), "alice");
    let observer = Running::start(&eps[2], &["elect", "-l", "pilot"]);
    assert_eq!(observer.line("the observed leader's key"), lkey);
    assert_eq!(observer.line("the observed leader's proposal"), "alice");
    let next = Running::start(&eps[1], &["elect", "pilot", "bob"]);
    assert!(
        next.quiet_for(Duration::from_millis(1500)),
        "a second candidate won while the leader lived"
    );
    leader.interrupt();
    let nkey = next.line("the new leader's key");
    assert!(nkey.starts_with("pilot/") && nkey != lkey, "{nkey}");
    assert_eq!(next.line("the new leader's proposal"), "bob");
    assert_eq!(observer.line("the new leader's key, observed"), nkey);
    assert_eq!(observer.line("the new leader's proposal, observed"), "bob");
    drop((next, observer));

    runtime.block_on(async {
        for m in members {
            m.stop().await;
        }
    });
}

#[test]
fn etcdctl_against_a_replicated_cluster() {
    if !etcdctl_installed() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let ports: Vec<(u16, u16)> = (0..3).map(|_| (free_port(), free_port())).collect();
    let spec = ClusterSpec::local(dir.path().to_path_buf(), &ports);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let members = runtime.block_on(start_cluster(&spec)).unwrap();
    let eps: Vec<String> = spec.members.iter().map(|m| m.client.to_string()).collect();
    let all = eps.join(",");

    // The first write waits out the first election (etcdctl retries).
    let (ok, out, err) = etcdctl(&all, &["put", "greeting", "hello"]);
    assert!(ok && out == "OK\n", "{out}{err}");
    for ep in &eps {
        let (ok, out, err) = etcdctl(ep, &["get", "greeting", "--print-value-only"]);
        assert!(ok && out == "hello\n", "{ep}: {out}{err}");
    }
    let (ok, out, err) = etcdctl(&eps[2], &["put", "greeting", "hi", "--prev-kv"]);
    assert!(ok && out == "OK\ngreeting\nhello\n", "{out}{err}");
    let (ok, out, err) = etcdctl(&eps[1], &["member", "list"]);
    assert!(ok && out.lines().count() == 3, "{out}{err}");
    // Every member, found through MemberList: etcdctl 3.4's --cluster dials
    // the client URLs and sends each, scheme and all, as the HTTP/2 authority.
    let (ok, out, err) = etcdctl(&eps[0], &["endpoint", "status", "--cluster"]);
    let leaders = out
        .lines()
        .filter(|l| l.contains(", true, false, "))
        .count();
    assert!(ok && out.lines().count() == 3 && leaders == 1, "{out}{err}");
    let (ok, out, err) = etcdctl(
        &eps[1],
        &["get", "greeting", "--rev=2", "--print-value-only"],
    );
    assert!(ok && out == "hello\n", "{out}{err}");

    runtime.block_on(async {
        for m in members {
            m.stop().await;
        }
    });
}
