//! `synod wal verify|dump` on real data directories.

use std::path::Path;
use std::process::{Command, Output};
use synod_storage::{DiskStorage, Entry, HardState, Identity, RealFs, Storage, StorageOptions};

fn synod(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_synod"))
        .args(args)
        .output()
        .expect("run synod")
}

fn write_log(dir: &Path, entries: u64) {
    let id = Identity {
        cluster_id: 7,
        node_id: 1,
    };
    let (mut s, _) = DiskStorage::open(RealFs, dir, id, StorageOptions::default()).unwrap();
    let batch: Vec<Entry> = (1..=entries)
        .map(|i| Entry {
            index: i,
            term: 1,
            data: format!("value {i}").into_bytes(),
        })
        .collect();
    s.append(&batch).unwrap();
    s.set_hard_state(HardState {
        term: 1,
        vote: 1,
        commit: entries,
    })
    .unwrap();
    s.sync().unwrap();
}

fn segment(dir: &Path) -> std::path::PathBuf {
    let wal = dir.join("wal");
    std::fs::read_dir(&wal)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "wal"))
        .expect("a segment")
}

#[test]
fn verify_and_dump_an_intact_log() {
    let d = tempfile::tempdir().unwrap();
    write_log(d.path(), 50);
    let out = synod(&["wal", "verify", d.path().to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = synod(&["wal", "dump", d.path().to_str().unwrap()]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.lines().count() >= 50, "one line per record: {text}");
}

#[test]
fn verify_names_the_file_and_offset_of_a_flipped_byte() {
    let d = tempfile::tempdir().unwrap();
    write_log(d.path(), 50);
    let seg = segment(d.path());
    let mut bytes = std::fs::read(&seg).unwrap();
    // Somewhere in the middle of the records: not the header, not the tail.
    let at = 64 + 200;
    bytes[at] ^= 0x40;
    std::fs::write(&seg, &bytes).unwrap();
    let out = synod(&["wal", "verify", d.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "corruption exits 1");
    let err = String::from_utf8_lossy(&out.stderr);
    let name = seg.file_name().unwrap().to_str().unwrap();
    assert!(err.contains(name), "names the segment: {err}");
    assert!(err.contains("offset"), "names the offset: {err}");
}

#[test]
fn verify_refuses_a_missing_directory() {
    let out = synod(&["wal", "verify", "/nonexistent/synod-data"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/synod-data"));
}
