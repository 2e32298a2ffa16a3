//! The `synod` command line.

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use synod_sim::history;
use synod_sim::linearizability::{self, CheckResult};

/// A member allocates and frees on every request (gRPC frames, commands,
/// replies); glibc's allocator took a sixth of its CPU under load.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod bench_cmd;
mod ceiling_cmd;
mod chaos;
mod config_file;
mod etcd_flags;
mod logs;
mod serve_cmd;
mod signals;
mod sim_cmd;
mod snapshot_cmd;
mod story_cmd;
mod up_cmd;
mod wal_cmd;
mod wal_dir;

#[derive(Parser)]
#[command(
    name = "synod",
    version,
    about = "A consensus toolkit: protocols, their proof in a deterministic simulator, and an etcd-compatible replicated service"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start a local cluster (3 members on 127.0.0.1 by default, one `synod
    /// serve` process each) serving etcd's v3 API, with durable storage; runs
    /// until Ctrl-C.
    Up(up_cmd::UpArgs),
    /// Run one member in this process, configured with etcd's flags (and
    /// their ETCD_* environment variables); runs until SIGINT or SIGTERM.
    Serve(Box<serve_cmd::ServeArgs>),
    /// Measure throughput and latency of puts, gets, transactions, watches or
    /// lease keep-alives through etcd's v3 API against running endpoints
    /// (synod's or etcd's).
    Bench(bench_cmd::BenchArgs),
    /// Serve etcd's API from members that answer at once and store nothing:
    /// the most any server could reach through `synod bench` on this machine.
    Ceiling(ceiling_cmd::CeilingArgs),
    /// Run an algorithm many times in the deterministic simulator under faults and
    /// check its properties on every run.
    Sim(sim_cmd::SimArgs),
    /// Play one of the seeds' stories (`list` names them) in the simulator
    /// and draw it: `--svg F` for a picture, `--html F` for a page that
    /// replays it.
    Story(story_cmd::StoryArgs),
    /// Check a key-value client history (JSON lines, as written by `synod sim
    /// --history`) for linearizability. Exit status: 0 linearizable, 1 not
    /// linearizable, 2 unreadable or malformed file, 3 the search ran out of budget.
    CheckHistory {
        /// The history file.
        file: PathBuf,
    },
    /// Inspect a write-ahead log directory.
    #[command(subcommand)]
    Wal(wal_cmd::WalCmd),
    /// Run a cluster of real member processes (synod's, or etcd's), a client
    /// workload and injected faults, then check the whole history.
    Chaos(chaos::ChaosArgs),
    /// Check a snapshot file (`etcdctl snapshot save` from a synod member),
    /// or start a new cluster from one.
    #[command(subcommand)]
    Snapshot(snapshot_cmd::SnapshotCmd),
}

/// Turns transparent huge pages off for this process (a server's).
///
/// mimalloc asks for huge pages on its arenas, so every fresh or purged
/// stretch the allocator touches is zeroed two megabytes at a time, and a
/// partly used huge page stays resident whole. Under put load that zeroing
/// was a tenth of the machine's CPU, and turning it off cut CPU per put,
/// the put p99 and resident memory (BENCHMARKS.md). Best effort: a kernel
/// without the knob changes nothing else.
fn no_huge_pages() {
    #[cfg(target_os = "linux")]
    // SAFETY: PR_SET_THP_DISABLE takes plain integers and touches no memory
    // of ours; it only sets a flag on this process.
    unsafe {
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
    }
}

/// Hands the memory freed so far back to the system. Recovery reads the
/// snapshot and the log into buffers it then frees, and mimalloc keeps freed
/// memory until the thread that owns it allocates again; the thread that
/// recovered a member then only waits for signals, so an idle member kept
/// its recovery's peak (405 against 300 MB per member once it had served a
/// few puts, with 300,000 keys).
pub(crate) fn release_freed_memory() {
    // SAFETY: mi_collect only frees memory no allocation refers to.
    unsafe { libmimalloc_sys::mi_collect(true) }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Up(args) => up_cmd::run(args),
        Command::Serve(args) => {
            no_huge_pages();
            serve_cmd::run(*args)
        }
        Command::Bench(args) => bench_cmd::run(args),
        Command::Ceiling(args) => {
            no_huge_pages();
            ceiling_cmd::run(args)
        }
        Command::Sim(args) => sim_cmd::run(args),
        Command::Story(args) => story_cmd::run(args),
        Command::CheckHistory { file } => check_history(&file),
        Command::Wal(cmd) => wal_cmd::run(cmd),
        Command::Snapshot(cmd) => snapshot_cmd::run(cmd),
        Command::Chaos(args) => chaos::run(args),
    };
    match result {
        Ok(code) => code,
        // A reader that stops early (`synod sim --trace | head`) is not an error.
        Err(e) if e.contains("Broken pipe") => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("synod: {e}");
            ExitCode::from(2)
        }
    }
}

fn check_history(path: &PathBuf) -> Result<ExitCode, String> {
    let file =
        std::fs::File::open(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let ops = history::read_jsonl(std::io::BufReader::new(file))
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let verdict = linearizability::check(&ops);
    println!("{verdict}");
    Ok(match verdict {
        CheckResult::Linearizable => ExitCode::SUCCESS,
        CheckResult::NotLinearizable(_) => ExitCode::from(1),
        CheckResult::Malformed { .. } => ExitCode::from(2),
        CheckResult::Unknown { .. } => ExitCode::from(3),
    })
}
