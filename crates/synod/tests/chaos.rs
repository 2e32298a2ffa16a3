//! A short `synod chaos` run in the default suite: three real `synod serve`
//! processes, SIGKILLs (the leader's among them) and SIGSTOPs for a few
//! seconds under a register workload; the history must be linearizable and
//! every member's HashKV equal afterwards, and every watcher must have seen
//! the committed events without a gap, and no kept-alive lease may have
//! expired, and the lock's fenced counter must be exact.

use std::process::Command;

#[test]
fn a_short_chaos_run_keeps_the_history_linearizable() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_synod"))
        .args(["chaos", "--duration", "8", "--seed", "3", "--json"])
        // The faults of the module docs; the others have tests of their own,
        // and a schedule drawn from these alone does not change with them
        // (or with whether the run may use namespaces).
        .args(["--faults", "kill,kill-leader,pause", "--out"])
        .arg(dir.path().join("run"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(summary["linearizable"], true, "{summary}");
    assert_eq!(summary["hashkv_equal"], true, "{summary}");
    assert!(summary["faults"].as_u64().unwrap() >= 2, "{summary}");
    assert!(summary["completed"].as_u64().unwrap() > 100, "{summary}");
    assert_eq!(summary["watch"]["gap_free"], true, "{summary}");
    assert!(
        summary["watch"]["resumes"].as_u64().unwrap() > 0,
        "{summary}"
    );
    // What it writes, a user can check again on its own.
    let history = dir.path().join("run/history.jsonl");
    let check = Command::new(env!("CARGO_BIN_EXE_synod"))
        .arg("check-history")
        .arg(&history)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stdout)
    );
}

/// Runs `synod chaos` with `--unsafe-bug BUG` and `args`; returns its
/// summary and whether the command succeeded.
fn run_broken(bug: &str, seed: u64, args: &[&str]) -> (serde_json::Value, bool) {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_synod"))
        .args(["chaos", "--json", "--seed", &seed.to_string()])
        .args(["--unsafe-bug", bug])
        .args(args)
        .arg("--out")
        .arg(dir.path().join("run"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let summary: serde_json::Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("{e}: {stdout}{}", String::from_utf8_lossy(&out.stderr)));
    assert_eq!(summary["unsafe_bug"], bug);
    (summary, out.status.success())
}

/// The run must catch a member that breaks linearizability: here every
/// follower answers linearizable reads from its own store, without asking
/// the leader (`--unsafe-bug`, in test builds only). A few seconds of the
/// register workload show a stale read; RELIABILITY.md has the figures.
#[test]
fn a_synod_whose_followers_read_locally_is_caught() {
    let caught = (1..=3).any(|seed| {
        let (summary, ok) = run_broken("follower-reads-own-commit", seed, &["--duration", "4"]);
        if summary["linearizable"] == true {
            return false;
        }
        assert!(!ok, "a failed check fails the command");
        let verdict = summary["verdict"].as_str().unwrap();
        assert!(verdict.contains("no order of its"), "{verdict}");
        true
    });
    assert!(caught, "three seeds never caught the stale reads");
}

/// The watch check must catch a member that resumes a watch one revision
/// late: every watcher that reconnects (the run makes them reconnect on
/// purpose) misses one event.
#[test]
fn a_watch_that_resumes_one_revision_late_is_caught() {
    let args = ["--duration", "4", "--faults", "pause"];
    let (summary, ok) = run_broken("watch-resume-skips-one", 1, &args);
    assert!(!ok, "{summary}");
    assert_eq!(summary["watch"]["gap_free"], false, "{summary}");
    let problems = summary["watch"]["problems"].to_string();
    assert!(problems.contains("gap: missed revision"), "{problems}");
}

/// The lease check must catch leases that end a little early (the leader
/// counts a lease's ticks without the two that cover the current tick and
/// the answer's trip back): some key is gone before its TTL has passed
/// since the grant was sent.
#[test]
fn leases_that_end_early_are_caught() {
    let args = ["--duration", "6", "--faults", "pause", "--leases", "8"];
    let caught = (1..=3).any(|seed| {
        let (summary, ok) = run_broken("short-leases", seed, &args);
        if summary["lease"]["ok"] == true {
            return false;
        }
        assert!(!ok, "{summary}");
        let problems = summary["lease"]["problems"].to_string();
        assert!(problems.contains("after the grant was sent"), "{problems}");
        true
    });
    assert!(caught, "three seeds never caught the short leases");
}

/// The watch check must catch a write applied twice: here a follower whose
/// leader dies sends the writes it had forwarded to the new leader at once,
/// without first learning from its own log whether they were applied. Many
/// clients on many keys keep forwarded writes in flight at every kill, but a
/// kill only shows the bug if a forwarded write is applied just before it:
/// with 32 clients, 3 of 4 seeds of 6 s here, and once 0 of 3 in CI. So 64
/// clients (4 of 4 seeds of 8 s; the correct build: 2 of 2 clean) and up to
/// six seeds; the first that catches it ends the test.
#[test]
fn a_forwarded_write_sent_again_too_soon_is_caught() {
    let args = [
        "--duration",
        "8",
        "--faults",
        "kill-leader",
        "--clients",
        "64",
        "--keys",
        "16",
        "--leases",
        "0",
        "--lockers",
        "0",
    ];
    let caught = (1..=6).any(|seed| {
        let (summary, ok) = run_broken("retry-unsettled-forwards", seed, &args);
        if summary["watch"]["gap_free"] == true {
            return false;
        }
        assert!(!ok, "{summary}");
        let problems = summary["watch"]["problems"].to_string();
        assert!(problems.contains("one write applied twice"), "{problems}");
        true
    });
    assert!(caught, "six seeds never caught a write applied twice");
}

/// Runs `synod chaos --faults FAULTS` for `seconds` as root, and returns
/// its summary and timeline; `None` (with the reason printed) where those
/// faults cannot run (no root, no `ip` or `mount`).
fn run_as_root(faults: &str, seconds: &str, seed: &str) -> Option<(serde_json::Value, String)> {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_synod"))
        .args(["chaos", "--duration", seconds, "--seed", seed, "--json"])
        .args(["--faults", faults, "--out"])
        .arg(dir.path().join("run"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if stderr.contains("cannot run here") {
        eprintln!("{faults} skipped: {}", stderr.trim());
        return None;
    }
    assert!(out.status.success(), "{faults}: {stdout}\n{stderr}");
    let summary: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(summary["linearizable"], true, "{summary}");
    assert_eq!(summary["hashkv_equal"], true, "{summary}");
    assert_eq!(summary["watch"]["gap_free"], true, "{summary}");
    let timeline = std::fs::read_to_string(dir.path().join("run/timeline.txt")).unwrap();
    Some((summary, timeline))
}

/// Partitions for real: each member in a network namespace of its own, a
/// minority (the leader, in turn) cut off by blackhole routes and healed.
/// Needs root and iproute2; skipped with the reason otherwise.
#[test]
fn partitions_keep_the_history_linearizable() {
    let Some((summary, timeline)) = run_as_root("partition,partition-leader", "8", "1") else {
        return;
    };
    assert!(summary["faults"].as_u64().unwrap() >= 2, "{summary}");
    assert!(timeline.contains("partition ["), "{timeline}");
    assert!(timeline.contains("heal"), "{timeline}");
}

/// Membership churn (a follower removed, wiped, added back as a learner and
/// promoted), a full disk (one member's small tmpfs filled for 2 s) and a
/// slow link (one member's veth limited by `tc` for 2 s): the cluster keeps
/// every check passing. The disk and the link need root (a mount, a
/// namespace); skipped with the reason otherwise.
#[test]
fn churn_a_full_disk_and_a_slow_link_keep_every_check_passing() {
    // A churned member must come back as a voter; a full disk must fill;
    // a slowed link must be slowed.
    let kinds = [
        ("churn", "added back as a learner, promoted"),
        ("disk-full", "full ("),
        ("slow", "slowed"),
    ];
    for (kind, mark) in kinds {
        if let Some((_, timeline)) = run_as_root(kind, "6", "2") {
            assert!(timeline.contains(mark), "{kind}: {timeline}");
        }
    }
}
