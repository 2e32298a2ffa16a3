//! etcdctl (the real one, from etcd's release or Debian's `etcd-client`)
//! against synod's API layer. Skipped when etcdctl is not installed, unless
//! `SYNOD_REQUIRE_ETCDCTL` is set (CI sets it and installs etcdctl first), in
//! which case a missing etcdctl fails the test.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;
use synod_etcd::Limits;

/// The etcdctl to run: `$ETCDCTL`, else `etcdctl` on the PATH.
fn etcdctl_binary() -> Option<String> {
    let bin = std::env::var("ETCDCTL").unwrap_or_else(|_| "etcdctl".into());
    let found = Command::new(&bin)
        .arg("version")
        .env("ETCDCTL_API", "3")
        .output()
        .is_ok_and(|o| o.status.success());
    found.then_some(bin)
}

struct Ctl {
    bin: String,
    endpoint: String,
}

impl Ctl {
    /// Runs etcdctl with `args` (and `stdin`), returning (success, stdout, stderr).
    fn run_with(&self, args: &[&str], stdin: &str) -> (bool, String, String) {
        let mut child = Command::new(&self.bin)
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", self.endpoint))
            .arg("--command-timeout=10s")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("etcdctl starts");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(stdin.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Starts `etcdctl watch ARGS` and returns it with a channel of its output
    /// lines (read on a thread, so a missing event times out instead of hanging).
    fn watch(&self, args: &[&str]) -> (std::process::Child, mpsc::Receiver<String>) {
        let mut child = Command::new(&self.bin)
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", self.endpoint))
            .arg("watch")
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("etcdctl starts");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                if tx.send(line.unwrap_or_default()).is_err() {
                    return;
                }
            }
        });
        (child, rx)
    }

    /// Runs a command that must succeed and returns its stdout.
    fn ok(&self, args: &[&str]) -> String {
        let (ok, out, err) = self.run_with(args, "");
        assert!(ok, "etcdctl {args:?} failed: {err}");
        out
    }

    /// Runs a command that must fail and returns the last line of its stderr.
    fn fails(&self, args: &[&str]) -> String {
        let (ok, out, err) = self.run_with(args, "");
        assert!(!ok, "etcdctl {args:?} should fail, printed {out}");
        err.lines().last().unwrap_or("").to_string()
    }
}

#[test]
fn etcdctl_works_against_synod() {
    let Some(bin) = etcdctl_binary() else {
        assert!(
            std::env::var_os("SYNOD_REQUIRE_ETCDCTL").is_none(),
            "SYNOD_REQUIRE_ETCDCTL is set but etcdctl is not installed"
        );
        eprintln!("skipped: etcdctl not installed (Debian: apt-get install etcd-client)");
        return;
    };
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let endpoint = runtime.block_on(common::serve(Limits::default()));
    let ctl = Ctl { bin, endpoint };

    assert_eq!(ctl.ok(&["put", "greeting", "hello"]), "OK\n");
    assert_eq!(ctl.ok(&["get", "greeting"]), "greeting\nhello\n");
    assert_eq!(
        ctl.ok(&["put", "greeting", "hi", "--prev-kv"]),
        "OK\ngreeting\nhello\n"
    );
    for k in ["app/a", "app/b", "other"] {
        ctl.ok(&["put", k, k]);
    }
    assert_eq!(
        ctl.ok(&["get", "app/", "--prefix", "--keys-only"]),
        "app/a\n\napp/b\n\n"
    );
    assert_eq!(
        ctl.ok(&["get", "app/", "--prefix", "--limit=1"]),
        "app/a\napp/a\n"
    );
    assert_eq!(ctl.ok(&["del", "app/", "--prefix"]), "2\n");

    // A transaction read from stdin: compares, success ops, failure ops.
    let (ok, out, err) = ctl.run_with(
        &["txn"],
        "value(\"greeting\") = \"hi\"\n\nput greeting bye\n\nput greeting never\n\n",
    );
    assert!(ok, "{err}");
    assert_eq!(out, "SUCCESS\n\nOK\n");
    assert_eq!(ctl.ok(&["get", "greeting", "--print-value-only"]), "bye\n");

    // Leases: ids print in hex; revoking deletes the attached key.
    let granted = ctl.ok(&["lease", "grant", "60"]);
    let id = granted.split_whitespace().nth(1).unwrap().to_string();
    assert!(granted.ends_with("granted with TTL(60s)\n"), "{granted}");
    ctl.ok(&["put", "ephemeral", "x", &format!("--lease={id}")]);
    let ttl = ctl.ok(&["lease", "timetolive", &id, "--keys"]);
    assert!(ttl.contains("attached keys([ephemeral])"), "{ttl}");
    assert!(ctl
        .ok(&["lease", "keep-alive", "--once", &id])
        .contains("keepalived with TTL(60)"));
    assert_eq!(
        ctl.ok(&["lease", "revoke", &id]),
        format!("lease {id} revoked\n")
    );
    assert_eq!(ctl.ok(&["get", "ephemeral"]), "");

    // etcd's typed errors, recognised by etcdctl from their messages.
    let rev: i64 = ctl
        .ok(&["get", "greeting", "-w", "fields"])
        .lines()
        .find_map(|l| l.strip_prefix("\"Revision\" : "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(ctl
        .ok(&["compaction", &rev.to_string()])
        .contains("compacted revision"));
    assert_eq!(
        ctl.fails(&["get", "greeting", "--rev=2"]),
        "Error: etcdserver: mvcc: required revision has been compacted"
    );
    assert_eq!(
        ctl.fails(&["get", "greeting", &format!("--rev={}", rev + 100)]),
        "Error: etcdserver: mvcc: required revision is a future revision"
    );
    assert_eq!(
        ctl.fails(&["put", "k", "v", "--lease=77"]),
        "Error: etcdserver: requested lease not found"
    );

    // Watch: history from a past revision, then a live change.
    let start = ctl
        .ok(&["put", "watched", "one", "-w", "fields"])
        .lines()
        .find_map(|l| l.strip_prefix("\"Revision\" : "))
        .unwrap()
        .to_string();
    let (mut child, lines) = ctl.watch(&["watched", &format!("--rev={start}")]);
    let next = || {
        lines
            .recv_timeout(Duration::from_secs(20))
            .expect("etcdctl watch prints the event")
    };
    assert_eq!([next(), next(), next()], ["PUT", "watched", "one"]);
    ctl.ok(&["del", "watched"]);
    assert_eq!([next(), next()], ["DELETE", "watched"]);
    child.kill().unwrap();
    child.wait().unwrap();

    // Cluster and member status.
    assert!(ctl.ok(&["member", "list"]).starts_with("1, started, n1, "));
    assert!(ctl.ok(&["endpoint", "status"]).contains(", 1, 3.4.0, "));
    // etcdctl 3.4 prints health to stderr, later versions to stdout.
    let (ok, out, err) = ctl.run_with(&["endpoint", "health"], "");
    assert!(ok && (out + &err).contains("is healthy"));
}
