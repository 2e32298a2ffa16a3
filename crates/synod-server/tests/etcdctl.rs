//! etcdctl against a three-member cluster: what `synod up` serves. Skipped
//! when etcdctl is missing, unless `SYNOD_REQUIRE_ETCDCTL` is set (CI).

use std::process::Command;
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
