//! A short `synod chaos` run in the default suite: three real `synod serve`
//! processes, SIGKILLs (the leader's among them) and SIGSTOPs for a few
//! seconds under a register workload; the history must be linearizable and
//! every member's HashKV equal afterwards.

use std::process::Command;

#[test]
fn a_short_chaos_run_keeps_the_history_linearizable() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_synod"))
        .args(["chaos", "--duration", "8", "--seed", "3", "--json", "--out"])
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
