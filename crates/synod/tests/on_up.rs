//! What users run against `synod up`, run against `synod up`: etcdctl's
//! `lock` and `elect`, and every example program, each outcome asserted.
//! Skipped when etcdctl is missing or the examples are not built, unless
//! `SYNOD_REQUIRE_ETCDCTL` / `SYNOD_REQUIRE_EXAMPLES` is set (CI sets both;
//! `cargo test --workspace` builds the examples).

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

mod common;
use common::{free_base, up};

/// Stops `synod up` with SIGTERM (its members stop with it) at the end.
struct Stop(Child);

impl Drop for Stop {
    fn drop(&mut self) {
        let pid = self.0.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.0.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn endpoints(base: u16) -> Vec<String> {
    (0..3)
        .map(|k| format!("127.0.0.1:{}", base + 10_000 * k))
        .collect()
}

fn etcdctl(endpoints: &str, args: &[&str]) -> (bool, String, String) {
    let out = Command::new("etcdctl")
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

/// Whether etcdctl can run; false means skip (a failure under CI's
/// `SYNOD_REQUIRE_ETCDCTL`).
fn etcdctl_installed() -> bool {
    let installed = Command::new("etcdctl")
        .arg("version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !installed {
        assert!(
            std::env::var_os("SYNOD_REQUIRE_ETCDCTL").is_none(),
            "SYNOD_REQUIRE_ETCDCTL is set but etcdctl is not installed"
        );
        eprintln!("skipped: etcdctl not installed (Debian: apt-get install etcd-client)");
    }
    installed
}

/// A long-running etcdctl (`lock`, `elect`) whose output lines arrive on a
/// channel, read on a thread, so a line that never comes times out.
struct Running {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Running {
    fn start(endpoints: &str, args: &[&str]) -> Running {
        let mut child = Command::new("etcdctl")
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
fn etcdctl_lock_and_elect_against_synod_up() {
    if !etcdctl_installed() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let base = free_base();
    let (up, _said) = up(dir.path(), base);
    let _up = Stop(up);
    let eps = endpoints(base);
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
}

/// etcdctl's auth session against `synod up`, as an operator runs it: a root
/// user and role, auth on, a read-only user, auth off. Users added through
/// one member are known on the others, and a token from one member works on
/// every member.
#[test]
fn etcdctl_auth_against_synod_up() {
    if !etcdctl_installed() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let base = free_base();
    let (up, _said) = up(dir.path(), base);
    let _up = Stop(up);
    let eps = endpoints(base);
    let run = |ep: &str, args: &[&str]| {
        let (ok, out, err) = etcdctl(ep, args);
        assert!(ok, "etcdctl {args:?}: {out}{err}");
        out
    };
    let refused = |ep: &str, args: &[&str], why: &str| {
        let (ok, out, err) = etcdctl(ep, args);
        assert!(!ok, "etcdctl {args:?} succeeded: {out}");
        assert!(err.contains(why), "etcdctl {args:?}: {err}");
    };
    assert_eq!(
        run(&eps[0], &["user", "add", "root:rootpw"]),
        "User root created\n"
    );
    run(&eps[0], &["role", "add", "root"]);
    run(&eps[0], &["user", "grant-role", "root", "root"]);
    assert_eq!(
        run(&eps[0], &["auth", "enable"]),
        "Authentication Enabled\n"
    );

    fn with<'a>(user: &'a str, args: &[&'a str]) -> Vec<&'a str> {
        [&["--user", user][..], args].concat()
    }
    let as_root = |args: &[&'static str]| with("root:rootpw", args);
    refused(
        &eps[1],
        &["put", "k", "v"],
        "etcdserver: user name is empty",
    );
    assert_eq!(run(&eps[1], &as_root(&["put", "k", "v"])), "OK\n");
    refused(
        &eps[2],
        &["--user", "root:wrong", "get", "k"],
        "etcdserver: authentication failed, invalid user ID or password",
    );

    run(&eps[0], &as_root(&["role", "add", "ro"]));
    run(
        &eps[0],
        &as_root(&[
            "role",
            "grant-permission",
            "ro",
            "read",
            "/app/",
            "--prefix=true",
        ]),
    );
    run(&eps[0], &as_root(&["user", "add", "alice:apw"]));
    run(&eps[0], &as_root(&["user", "grant-role", "alice", "ro"]));
    run(&eps[0], &as_root(&["put", "/app/x", "5"]));
    // Granted through member 0, in force on member 2.
    let alice = |args: &[&'static str]| with("alice:apw", args);
    assert_eq!(run(&eps[2], &alice(&["get", "/app/x"])), "/app/x\n5\n");
    refused(
        &eps[2],
        &alice(&["put", "/app/x", "6"]),
        "etcdserver: permission denied",
    );
    refused(
        &eps[1],
        &alice(&["get", "/other"]),
        "etcdserver: permission denied",
    );
    assert_eq!(
        run(&eps[1], &as_root(&["user", "get", "alice"])),
        "User: alice\nRoles: ro\n"
    );

    token_from_one_member_works_on_another(&eps);

    assert_eq!(
        run(&eps[1], &as_root(&["auth", "disable"])),
        "Authentication Disabled\n"
    );
    assert_eq!(run(&eps[2], &["put", "/app/x", "7"]), "OK\n");
}

/// Authenticates as alice on member 0 and reads with the token on the
/// other two.
fn token_from_one_member_works_on_another(eps: &[String]) {
    use synod_etcd::pb::etcdserverpb as pb;
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let channel = |ep: &str| {
            tonic::transport::Channel::from_shared(format!("http://{ep}"))
                .unwrap()
                .connect_lazy()
        };
        let token = pb::auth_client::AuthClient::new(channel(&eps[0]))
            .authenticate(pb::AuthenticateRequest {
                name: "alice".into(),
                password: "apw".into(),
            })
            .await
            .expect("alice authenticates")
            .into_inner()
            .token;
        for ep in &eps[1..] {
            let mut req = tonic::Request::new(pb::RangeRequest {
                key: b"/app/x".to_vec(),
                ..Default::default()
            });
            req.metadata_mut().insert("token", token.parse().unwrap());
            let r = pb::kv_client::KvClient::new(channel(ep))
                .range(req)
                .await
                .unwrap_or_else(|e| panic!("{ep} refused member 0's token: {e}"));
            assert_eq!(r.into_inner().kvs[0].value, b"5");
        }
    });
}

/// Where cargo put this crate's example programs (beside the binary), or
/// None to skip (a failure under CI's `SYNOD_REQUIRE_EXAMPLES`).
fn examples_dir() -> Option<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_BIN_EXE_synod"))
        .parent()
        .expect("the binary's directory")
        .join("examples");
    if dir.join("user_of_the_day").exists() {
        return Some(dir);
    }
    assert!(
        std::env::var_os("SYNOD_REQUIRE_EXAMPLES").is_none(),
        "SYNOD_REQUIRE_EXAMPLES is set but {} holds no examples",
        dir.display()
    );
    eprintln!(
        "skipped: examples not built in {} (cargo test --workspace builds them)",
        dir.display()
    );
    None
}

/// Runs example `name` against the cluster; its output.
fn example(dir: &std::path::Path, name: &str, base: u16) -> String {
    let out = Command::new(dir.join(name))
        .env("SYNOD_ENDPOINTS", endpoints(base).join(","))
        .output()
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{name}: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

/// The line of `text` that starts with `prefix`.
fn line<'a>(text: &'a str, prefix: &str) -> &'a str {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no line starting {prefix:?} in:\n{text}"))
}

#[test]
fn every_example_tells_its_story_against_synod_up() {
    let Some(dir) = examples_dir() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let base = free_base();
    let (up, _said) = up(tmp.path(), base);
    let _up = Stop(up);

    let out = example(&dir, "user_of_the_day", base);
    assert!(
        line(&out, "winner: ").ends_with("(learned by all 20)"),
        "{out}"
    );

    let out = example(&dir, "order_cancellation", base);
    let l = line(&out, "order ");
    let learned: Vec<&str> = l.split('"').skip(1).step_by(2).collect();
    assert_eq!(learned.len(), 2, "{l}");
    assert_eq!(learned[0], learned[1], "both sides learn one fate: {l}");

    let out = example(&dir, "fencing_lock", base);
    assert!(
        line(&out, "second holder: ").ends_with("write accepted"),
        "{out}"
    );
    assert!(
        line(&out, "first holder wakes: ").contains("rejected"),
        "{out}"
    );

    let out = example(&dir, "branch_pushes", base);
    let history = line(&out, "history: ");
    assert_eq!(history.split_whitespace().count(), 1 + 20, "{out}");

    let out = example(&dir, "two_servers", base);
    assert!(
        line(&out, "without consensus: ").ends_with("diverged"),
        "{out}"
    );
    assert!(line(&out, "through synod: ").ends_with("agreed"), "{out}");

    let out = example(&dir, "config_watch", base);
    let watchers: Vec<&str> = out
        .lines()
        .filter(|l| l.starts_with("watcher on "))
        .collect();
    assert_eq!(watchers.len(), 3, "{out}");
    assert!(
        watchers
            .iter()
            .all(|w| w.ends_with("every version, in order")),
        "{out}"
    );

    let out = example(&dir, "leader_election", base);
    assert!(out.contains("(took over)"), "{out}");
}
