//! `synod up` as a service manager runs it: started, written to, stopped
//! with SIGTERM (what systemd, Kubernetes and Docker send), started again.

use std::process::{Child, Command};
use std::time::Duration;

mod common;
use common::{free_base, up, up_saying};

fn etcdctl(base: u16, args: &[&str]) -> Option<String> {
    let eps = format!(
        "127.0.0.1:{},127.0.0.1:{},127.0.0.1:{}",
        base,
        base + 10_000,
        base + 20_000
    );
    let out = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={eps}"))
        .arg("--command-timeout=15s")
        .args(args)
        .output()
        .ok()?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn sigterm_stops_cleanly_with_exit_0_and_the_data_survives() {
    let dir = tempfile::tempdir().unwrap();
    let base = free_base();
    let (child, lines) = up(dir.path(), base);
    // With etcdctl, a write must survive the stop (without it, the stop alone).
    let wrote = etcdctl(base, &["put", "survives", "sigterm"]).is_some();
    if !wrote {
        assert!(
            std::env::var_os("SYNOD_REQUIRE_ETCDCTL").is_none(),
            "SYNOD_REQUIRE_ETCDCTL is set but etcdctl is not installed"
        );
    }
    let pid = child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let status = wait(child);
    assert_eq!(
        status.code(),
        Some(0),
        "SIGTERM is an orderly stop, not a kill"
    );
    let said: Vec<String> = lines.try_iter().collect();
    assert!(
        said.iter().any(|l| l == "synod: SIGTERM: stopping"),
        "{said:?}"
    );
    assert!(said.iter().any(|l| l == "synod: stopped"), "{said:?}");

    if wrote {
        let (again, _) = up(dir.path(), base);
        let got = etcdctl(base, &["get", "survives", "--print-value-only"]);
        // An orderly stop, so that the members stop with it.
        assert!(Command::new("kill")
            .args(["-TERM", &again.id().to_string()])
            .status()
            .unwrap()
            .success());
        assert_eq!(wait(again).code(), Some(0));
        assert_eq!(got.as_deref(), Some("sigterm\n"));
    }
}

/// Waits for the process to exit, killing it if it takes over 30 s.
fn wait(mut child: Child) -> std::process::ExitStatus {
    for _ in 0..300 {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    child.kill().unwrap();
    panic!("synod up did not stop within 30 s of SIGTERM");
}

/// One member with a corrupted log refuses to start, with the file and
/// offset, and `synod up` says which member is down and why; the other two
/// serve.
#[test]
fn a_member_with_a_corrupted_log_is_down_alone() {
    let dir = tempfile::tempdir().unwrap();
    let base = free_base();
    let (child, _lines) = up(dir.path(), base);
    let wrote = etcdctl(base, &["put", "before", "corruption"]).is_some();
    assert!(Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap()
        .success());
    assert_eq!(wait(child).code(), Some(0));

    // Flip a byte inside member 2's first record, with records after it: not
    // a torn tail but corruption inside the log.
    let wal = dir.path().join("member-2").join("wal");
    let seg = std::fs::read_dir(&wal)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "wal"))
        .min()
        .expect("member 2 has a WAL segment");
    let mut bytes = std::fs::read(&seg).unwrap();
    bytes[64 + 12 + 1] ^= 0xff;
    std::fs::write(&seg, bytes).unwrap();

    let (mut again, lines, mut said) = up_saying(dir.path(), base);
    let got = wrote.then(|| etcdctl(base, &["get", "before", "--print-value-only"]));
    let _ = Command::new("kill")
        .args(["-TERM", &again.id().to_string()])
        .status();
    let _ = wait_or_kill(&mut again);
    said.extend(lines.try_iter());
    let down = said
        .iter()
        .find(|l| l.contains("synod-2") && l.contains("is down"))
        .unwrap_or_else(|| panic!("synod up did not say synod-2 is down: {said:?}"));
    assert!(down.contains(&seg.display().to_string()), "{down}");
    assert!(down.contains("offset"), "{down}");
    assert!(
        said.iter()
            .any(|l| l.starts_with("synod: 2 of 3 members up")),
        "{said:?}"
    );
    if let Some(got) = got {
        assert_eq!(got.as_deref(), Some("corruption\n"));
    }
}

fn wait_or_kill(child: &mut Child) -> Option<std::process::ExitStatus> {
    for _ in 0..300 {
        if let Some(s) = child.try_wait().unwrap() {
            return Some(s);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    child.wait().ok()
}

#[test]
fn members_stop_when_synod_up_is_killed() {
    let dir = tempfile::tempdir().unwrap();
    let base = free_base();
    let (mut child, _lines) = up(dir.path(), base);
    let listening = |port: u16| std::net::TcpStream::connect(("127.0.0.1", port)).is_ok();
    let clients = [base, base + 10_000, base + 20_000];
    assert!(clients.iter().all(|p| listening(*p)), "members serve");
    // SIGKILL: synod up gets no chance to stop its members itself.
    child.kill().unwrap();
    child.wait().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while clients.iter().any(|p| listening(*p)) {
        assert!(
            std::time::Instant::now() < deadline,
            "members of a killed synod up still serve after 30 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
