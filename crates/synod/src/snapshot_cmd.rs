//! `synod snapshot status FILE` and `synod snapshot restore FILE ...`: what
//! `etcdutl snapshot` does for etcd's files, for the files `etcdctl snapshot
//! save` writes from a synod member.

use crate::serve_cmd::{plan, ServeArgs};
use clap::Subcommand;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use synod_kv::backup::{self, BackupStatus};
use synod_protocols::raft::{ConfState, HardState, Payload, Snapshot, SnapshotMeta, Write};
use synod_storage::{Identity, RealFs, StorageOptions};

#[derive(Subcommand)]
pub enum SnapshotCmd {
    /// Check a snapshot file whole and print its hash, revision, keys and
    /// size (exit 1 if it is damaged).
    Status {
        file: PathBuf,
        /// `table` (as etcdutl prints it) or `json`.
        #[arg(short = 'w', long = "write-out", default_value = "table")]
        write_out: String,
    },
    /// Start a new cluster's member from a snapshot file: give every member
    /// of the new cluster the same file and the flags it will be served
    /// with (`--name`, `--initial-cluster`, `--initial-cluster-token`,
    /// `--initial-advertise-peer-urls`, `--data-dir`), then `synod serve`
    /// each with those flags.
    Restore {
        file: PathBuf,
        #[command(flatten)]
        serve: Box<ServeArgs>,
    },
}

pub fn run(cmd: SnapshotCmd) -> Result<ExitCode, String> {
    match cmd {
        SnapshotCmd::Status { file, write_out } => {
            let (_, s) = match read(&file) {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("synod: {e}");
                    return Ok(ExitCode::FAILURE);
                }
            };
            print_status(&s, &write_out)?;
            Ok(ExitCode::SUCCESS)
        }
        SnapshotCmd::Restore { file, serve } => restore(&file, &serve),
    }
}

fn read(file: &Path) -> Result<(synod_kv::Store, BackupStatus), String> {
    let bytes = std::fs::read(file).map_err(|e| format!("{}: {e}", file.display()))?;
    backup::decode(&bytes).map_err(|e| format!("{}: {e}", file.display()))
}

fn print_status(s: &BackupStatus, write_out: &str) -> Result<(), String> {
    match write_out {
        "json" => println!(
            r#"{{"hash":{},"revision":{},"totalKey":{},"totalSize":{}}}"#,
            s.hash, s.revision, s.keys, s.size
        ),
        "table" => {
            let row = [
                format!("{:08x}", s.hash),
                s.revision.to_string(),
                s.keys.to_string(),
                s.size.to_string(),
            ];
            let head = ["HASH", "REVISION", "TOTAL KEYS", "TOTAL SIZE"];
            let widths: Vec<usize> = head
                .iter()
                .zip(&row)
                .map(|(h, r)| h.len().max(r.len()) + 2)
                .collect();
            let line: String = widths
                .iter()
                .map(|w| format!("+{}", "-".repeat(*w)))
                .collect();
            let cells = |cs: &[&str]| -> String {
                cs.iter()
                    .zip(&widths)
                    .map(|(c, w)| format!("|{c:^w$}"))
                    .collect()
            };
            println!("{line}+");
            println!("{}|", cells(&head));
            println!("{line}+");
            println!(
                "{}|",
                cells(&row.iter().map(String::as_str).collect::<Vec<_>>())
            );
            println!("{line}+");
        }
        other => return Err(format!("--write-out: {other:?} is neither table nor json")),
    }
    Ok(())
}

/// Writes the member's data directory: the store as a Raft snapshot at
/// index 1 of term 1, with every member of `--initial-cluster` a voter,
/// under the cluster and member ids `synod serve` derives from the same
/// flags.
fn restore(file: &Path, a: &ServeArgs) -> Result<ExitCode, String> {
    let (store, status) = read(file)?;
    let p = plan(a)?;
    let me = &p.spec.members[p.index];
    let dir = &me.data_dir;
    if std::fs::read_dir(dir).is_ok_and(|mut d| d.next().is_some()) {
        return Err(format!(
            "data-dir {:?} exists and is not empty; restore into a new directory",
            dir.display().to_string()
        ));
    }
    if let Some(w) = &p.wal_dir {
        if std::fs::read_dir(w).is_ok_and(|mut d| d.next().is_some()) {
            return Err(format!(
                "wal-dir {:?} exists and is not empty; restore into a new directory",
                w.display().to_string()
            ));
        }
        crate::wal_dir::link(dir, w)?;
    }
    let id = Identity {
        cluster_id: p.spec.cluster_id,
        node_id: me.member_id,
    };
    let (mut log, _, _) = synod_raft_log::RaftLog::open(RealFs, dir, id, StorageOptions::default())
        .map_err(|e| format!("{}: {e}", dir.display()))?;
    let voters = p.spec.members.iter().map(|m| m.member_id).collect();
    let snapshot = Snapshot {
        meta: SnapshotMeta {
            index: 1,
            term: 1,
            conf: ConfState {
                voters,
                learners: Vec::new(),
            },
        },
        data: Payload::encode(&store),
    };
    let hard = HardState {
        term: 1,
        vote: None,
        commit: 1,
    };
    log.persist(&[Write::Snapshot(snapshot), Write::HardState(hard)])
        .map_err(|e| format!("{}: {e}", dir.display()))?;
    println!(
        "synod: restored revision {} ({} keys) into {} for member {} ({:x}) of cluster {:x}",
        status.revision,
        status.keys,
        dir.display(),
        me.name,
        me.member_id,
        p.spec.cluster_id
    );
    Ok(ExitCode::SUCCESS)
}
