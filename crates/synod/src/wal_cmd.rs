//! `synod wal verify|dump DIR`: look inside a data directory without starting a node.

use clap::Subcommand;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Subcommand, Debug)]
pub enum WalCmd {
    /// Read every segment and snapshot, checking every checksum. Exit status: 0
    /// intact (a torn tail that recovery would truncate is reported, not an
    /// error), 1 corrupt (the error names the file and offset), 2 unreadable.
    Verify {
        /// The data directory (or its `wal/` subdirectory).
        dir: PathBuf,
    },
    /// Print every record, one per line, stopping at the first damaged one.
    Dump {
        /// The data directory (or its `wal/` subdirectory).
        dir: PathBuf,
    },
}

pub fn run(cmd: WalCmd) -> Result<ExitCode, String> {
    let (dir, result) = match cmd {
        WalCmd::Verify { dir } => {
            let r = synod_storage::verify(&dir).map(|report| println!("{report}"));
            (dir, r)
        }
        WalCmd::Dump { dir } => {
            let r = synod_storage::dump(&dir, std::io::stdout().lock());
            (dir, r)
        }
    };
    match result {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(e) if e.is_data_error() => {
            eprintln!("synod: {}: corrupt: {e}", dir.display());
            Ok(ExitCode::from(1))
        }
        Err(e) => Err(format!("{}: {e}", dir.display())),
    }
}
