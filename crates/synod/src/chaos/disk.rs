//! A small disk for one member: its data directory on a tmpfs of its own,
//! which the `disk-full` fault fills with a ballast file and then frees.
//! Mounting needs root; without it the fault is left out and the run says
//! so. (tmpfs makes that member's fsyncs free; the others keep the real
//! disk, so every write still waits for one real fsync on a majority.)

use std::path::{Path, PathBuf};
use std::process::Command;

/// The tmpfs's size: room for a 60 s run's log and snapshots, little enough
/// to fill in a moment.
const SIZE: &str = "512m";
const BALLAST: &str = "chaos-ballast";

/// The mounted directory; unmounted on drop (after the member is stopped).
pub struct SmallDisk {
    dir: PathBuf,
}

impl SmallDisk {
    /// Why a small disk cannot be mounted here, if it cannot.
    pub fn unavailable() -> Option<String> {
        // SAFETY: geteuid has no preconditions and touches no memory.
        if unsafe { libc::geteuid() } != 0 {
            return Some("mounting a small disk needs root".into());
        }
        if Command::new("mount").arg("-V").output().is_err() {
            return Some("mount is not installed".into());
        }
        None
    }

    /// Mounts a tmpfs at `dir` (created if missing).
    pub fn mount(dir: &Path) -> Result<SmallDisk, String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={SIZE}"), "tmpfs"])
            .arg(dir)
            .output()
            .map_err(|e| format!("mount: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "mount tmpfs on {}: {}",
                dir.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(SmallDisk {
            dir: dir.to_path_buf(),
        })
    }

    /// Writes a ballast file until the disk refuses more; returns how many
    /// bytes it took.
    pub fn fill(&self) -> Result<u64, String> {
        use std::io::Write;
        let path = self.dir.join(BALLAST);
        let mut f = std::fs::File::create(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let chunk = vec![0u8; 1 << 20];
        let mut written = 0u64;
        // Bounded: the tmpfs is far smaller than this.
        for _ in 0..64 * 1024 {
            match f.write(&chunk) {
                Ok(0) | Err(_) => break,
                Ok(n) => written += n as u64,
            }
        }
        Ok(written)
    }

    /// Removes the ballast.
    pub fn free(&self) -> Result<(), String> {
        let path = self.dir.join(BALLAST);
        std::fs::remove_file(&path).map_err(|e| format!("{}: {e}", path.display()))
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.dir).output();
    }
}

/// Deletes what a directory holds, not the directory itself (it may be a
/// mount point).
pub fn empty(dir: &Path) -> Result<(), String> {
    let entries = std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    for e in entries {
        let path = e.map_err(|e| format!("{}: {e}", dir.display()))?.path();
        let gone = if path.is_dir() {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
        gone.map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(())
}
