//! `--wal-dir`: the WAL in a directory of its own, for instance on a disk
//! whose fsyncs nothing else queues behind, as etcd's flag offers.
//!
//! The data directory keeps a symbolic link `wal` to it (as PostgreSQL's
//! `initdb --waldir` does), so that the data directory still describes the
//! whole member: storage, `synod wal` and the snapshot tools find the log
//! through the link, a restart without the flag still finds it, and a
//! restart with another directory, or with the WAL's disk not mounted, is
//! refused instead of starting from an empty log.

use std::path::{Path, PathBuf};

/// The WAL's place inside a data directory, as the storage opens it.
fn link_of(data_dir: &Path) -> PathBuf {
    data_dir.join("wal")
}

/// Refuses a `--wal-dir` (or its absence) that would not find the WAL this
/// data directory already has. Reads only.
pub fn check(data_dir: &Path, wal_dir: Option<&Path>) -> Result<(), String> {
    let link = link_of(data_dir);
    let meta = match std::fs::symlink_metadata(&link) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(format!("{}: {e}", link.display())),
    };
    if !meta.file_type().is_symlink() {
        return match wal_dir {
            None => Ok(()),
            Some(w) => Err(format!(
                "--wal-dir {}: {} already holds this member's WAL; to move it, stop the member, \
                 move the directory's files to the new place and leave a symbolic link to it \
                 instead",
                w.display(),
                link.display()
            )),
        };
    }
    let target = std::fs::read_link(&link).map_err(|e| format!("{}: {e}", link.display()))?;
    let target = data_dir.join(target);
    let real = std::fs::canonicalize(&target).map_err(|e| {
        format!(
            "{} links to the WAL directory {}, which cannot be opened ({e}): is its disk mounted?",
            link.display(),
            target.display()
        )
    })?;
    match wal_dir {
        Some(w) if std::fs::canonicalize(w).ok().as_deref() != Some(real.as_path()) => {
            Err(format!(
                "--wal-dir {}: this member's WAL is in {} ({} links there); give that directory, \
                 or leave out --wal-dir",
                w.display(),
                real.display(),
                link.display()
            ))
        }
        _ => Ok(()),
    }
}

/// Creates `wal_dir` and the data directory's link to it, unless the link
/// is there already (then [`check`] found it pointing at `wal_dir`).
pub fn link(data_dir: &Path, wal_dir: &Path) -> Result<(), String> {
    let link = link_of(data_dir);
    if std::fs::symlink_metadata(&link).is_ok() {
        return Ok(());
    }
    let fail = |what: &Path, e: std::io::Error| format!("--wal-dir: {}: {e}", what.display());
    std::fs::create_dir_all(wal_dir).map_err(|e| fail(wal_dir, e))?;
    // Absolute, so that the link means the same from wherever it is read.
    let target = std::fs::canonicalize(wal_dir).map_err(|e| fail(wal_dir, e))?;
    std::fs::create_dir_all(data_dir).map_err(|e| fail(data_dir, e))?;
    std::os::unix::fs::symlink(&target, &link).map_err(|e| fail(&link, e))?;
    // The link is how a restart finds the log: make it durable before any
    // entry is written through it.
    std::fs::File::open(data_dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| fail(data_dir, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_data_directory_remembers_where_its_wal_is() {
        let tmp = tempfile::tempdir().unwrap();
        let (data, wal, other) = (
            tmp.path().join("data"),
            tmp.path().join("disk2/wal"),
            tmp.path().join("disk3/wal"),
        );
        // A new member: nothing to contradict, then the link is made.
        check(&data, Some(&wal)).unwrap();
        link(&data, &wal).unwrap();
        assert!(wal.is_dir());
        let real = std::fs::canonicalize(data.join("wal")).unwrap();
        assert_eq!(real, std::fs::canonicalize(&wal).unwrap());
        // Restarts: with the same directory, or without the flag.
        check(&data, Some(&wal)).unwrap();
        check(&data, None).unwrap();
        link(&data, &wal).unwrap();
        // Another directory would start from an empty log.
        std::fs::create_dir_all(&other).unwrap();
        let err = check(&data, Some(&other)).unwrap_err();
        assert!(err.contains("give that directory"), "{err}");
        // The WAL's disk missing.
        std::fs::remove_dir(&wal).unwrap();
        let err = check(&data, None).unwrap_err();
        assert!(err.contains("is its disk mounted?"), "{err}");
        // A WAL inside the data directory is not moved behind its back.
        let inside = tmp.path().join("inside");
        std::fs::create_dir_all(inside.join("wal")).unwrap();
        check(&inside, None).unwrap();
        let err = check(&inside, Some(&wal)).unwrap_err();
        assert!(err.contains("already holds this member's WAL"), "{err}");
    }
}
