//! Starting `synod up` for a test, shared by the test files that need it.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// A base port whose three members' client and peer ports are all free.
pub fn free_base() -> u16 {
    // Tests of one process run in parallel: each call starts elsewhere.
    static CALLS: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(0);
    let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let start = 30_000 + (std::process::id() % 5_000) as u16 + call * 331;
    (start..45_000)
        .step_by(7)
        .find(|&p| {
            [p, p + 1, p + 10_000, p + 10_001, p + 20_000, p + 20_001]
                .iter()
                .all(|q| std::net::TcpListener::bind(("127.0.0.1", *q)).is_ok())
        })
        .expect("free ports for three members")
}

/// Starts `synod up` and returns it once it says how to stop it, with the
/// rest of its output on a channel.
pub fn up(dir: &std::path::Path, base: u16) -> (Child, mpsc::Receiver<String>) {
    let (child, rest, _) = up_saying(dir, base);
    (child, rest)
}

/// As [`up`], with what it said until then.
pub fn up_saying(dir: &std::path::Path, base: u16) -> (Child, mpsc::Receiver<String>, Vec<String>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_synod"))
        .args(["up", "--data-dir"])
        .arg(dir)
        .args(["--base-port", &base.to_string()])
        .stdout(Stdio::piped())
        .spawn()
        .expect("synod up starts");
    let out = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            if tx.send(line.unwrap_or_default()).is_err() {
                return;
            }
        }
    });
    let mut said = Vec::new();
    loop {
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(line) if line.starts_with("stop:") => return (child, rx, said),
            Ok(line) => said.push(line),
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("synod up never said it was up");
            }
        }
    }
}
