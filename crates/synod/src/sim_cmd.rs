//! `synod sim`: batches of simulated runs with a summary, or one traced run.

use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use synod_sim::models::raft;
use synod_sim::runner::EngineKind;
use synod_sim::{history, run_batch_parallel, run_one, scenarios, Algo, FaultSet, RunSpec};

#[derive(Args, Debug)]
pub struct SimArgs {
    /// Algorithm to simulate.
    #[arg(long, default_value = "paxos", value_parser = parse_algo)]
    algo: Algo,
    /// The consensus engine under the service's replicas (`--algo etcd`):
    /// raft (what the service runs) or multipaxos.
    #[arg(long, default_value = "raft")]
    engine: EngineKind,
    /// Number of nodes in the cluster.
    #[arg(long, default_value_t = 5)]
    nodes: usize,
    /// How many nodes are offered a value (write-once algorithms).
    #[arg(long, default_value_t = 3)]
    proposers: usize,
    /// Participants per transaction (2pc, 3pc, paxos-commit): nodes 1..=K, with
    /// node 0 the coordinator, so K must be below --nodes.
    #[arg(long, default_value_t = 3)]
    participants: usize,
    /// Number of runs; seeds are SEED, SEED+1, ...
    #[arg(long, default_value_t = 1000)]
    runs: u64,
    /// Seed of the first run.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Faults to inject: `all`, `none`, or a comma-separated list of crash, restart,
    /// power-loss, partition, loss, duplicate, reorder, delay, torn-write, corruption.
    /// `crash` alone is crash-stop (at most f nodes crash, none comes back);
    /// `crash,restart` is crash-recovery.
    #[arg(long, default_value = "all", value_parser = FaultSet::parse)]
    faults: FaultSet,
    /// Print the summary as one JSON object.
    #[arg(long)]
    json: bool,
    /// Print one run event by event (needs --runs 1).
    #[arg(long)]
    trace: bool,
    /// Threads to run seeds on (0: one per core). The summary is the same for
    /// any number of threads.
    #[arg(long, default_value_t = 1)]
    jobs: usize,
    /// Write the clients' history of the run to FILE as JSON lines (needs --runs 1
    /// and an algorithm with clients: raft); `synod check-history FILE` re-checks it.
    #[arg(long, value_name = "FILE")]
    history: Option<PathBuf>,
    /// Play one of the seeds' write-once stories (`list` names them) on the
    /// coordinator, majority and Paxos algorithms alike: fixed offers and
    /// failures instead of random ones; --seed still drives latencies.
    #[arg(long, value_name = "NAME")]
    scenario: Option<String>,
    /// Draw the run as a space-time diagram into FILE, an SVG (needs --runs 1).
    #[arg(long, value_name = "FILE")]
    svg: Option<PathBuf>,
    /// The same diagram in one self-contained HTML page that replays the run
    /// with a time slider (needs --runs 1).
    #[arg(long, value_name = "FILE")]
    html: Option<PathBuf>,
}

/// `--scenario NAME`: the story, then one line per algorithm.
fn play(
    name: &str,
    seed: u64,
    svg: Option<&PathBuf>,
    html: Option<&PathBuf>,
) -> Result<ExitCode, String> {
    let names = || {
        scenarios::SCENARIOS
            .iter()
            .map(|s| s.name)
            .collect::<Vec<_>>()
            .join(", ")
    };
    if name == "list" {
        println!("{}", names());
        return Ok(ExitCode::SUCCESS);
    }
    let Some(scenario) = scenarios::find(name) else {
        return Err(format!("no scenario {name:?}; there are: {}", names()));
    };
    println!("{}: {}", scenario.name, scenario.story);
    let mut violated = false;
    let drawing = svg.is_some() || html.is_some();
    for algo in scenarios::ALGOS {
        let outcome = if drawing {
            scenarios::run_drawn(scenario, algo, seed)
        } else {
            scenarios::run(scenario, algo, seed)
        };
        violated |= outcome.report.violation_count > 0;
        println!("  {}", outcome.describe());
        if let Some(timeline) = &outcome.report.timeline {
            let title = format!(
                "{} on {}: {}",
                scenario.name,
                algo.name(),
                outcome
                    .describe()
                    .split_whitespace()
                    .skip(1)
                    .collect::<Vec<_>>()
                    .join(" ")
            );
            // One file per algorithm: story.svg becomes story.paxos.svg.
            let per_algo = |p: &PathBuf| {
                p.with_extension(format!(
                    "{}.{}",
                    algo.name(),
                    p.extension().and_then(|e| e.to_str()).unwrap_or("")
                ))
            };
            if let Some(p) = svg {
                let p = per_algo(p);
                std::fs::write(&p, synod_sim::picture::svg(timeline, &title))
                    .map_err(|e| format!("{}: {e}", p.display()))?;
                eprintln!("drew {} into {}", algo.name(), p.display());
            }
            if let Some(p) = html {
                let p = per_algo(p);
                std::fs::write(&p, synod_sim::picture::html(timeline, &title))
                    .map_err(|e| format!("{}: {e}", p.display()))?;
                eprintln!("drew {} into {}", algo.name(), p.display());
            }
        }
    }
    Ok(if violated {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

fn parse_algo(s: &str) -> Result<Algo, String> {
    s.parse()
}

pub fn run(args: SimArgs) -> Result<ExitCode, String> {
    if let Some(name) = &args.scenario {
        return play(name, args.seed, args.svg.as_ref(), args.html.as_ref());
    }
    let mut spec = RunSpec::new(args.algo, args.nodes, args.faults);
    spec.proposers = args.proposers;
    spec.participants = args.participants;
    spec.engine = args.engine;
    spec.validate()?;
    if args.runs == 0 {
        return Err("--runs must be at least 1".into());
    }
    let drawing = args.svg.is_some() || args.html.is_some();
    if args.trace || args.history.is_some() || drawing {
        let flag = if args.trace {
            "--trace prints"
        } else if drawing {
            "--svg and --html draw"
        } else {
            "--history records"
        };
        if args.runs != 1 {
            return Err(format!(
                "{flag} one run; pass --runs 1 (got --runs {})",
                args.runs
            ));
        }
        spec.trace = args.trace;
        spec.timeline = drawing;
        let report = match &args.history {
            Some(path) => {
                if spec.algo != Algo::Raft {
                    return Err(format!(
                        "--history needs an algorithm with clients (raft), not {}",
                        spec.algo
                    ));
                }
                let (report, rec) = raft::run_recorded(&spec, args.seed);
                write_history(path, &rec.history)?;
                let indefinite = rec.history.iter().filter(|o| o.is_indefinite()).count();
                eprintln!(
                    "wrote {} operations ({indefinite} indefinite) to {}",
                    rec.history.len(),
                    path.display()
                );
                report
            }
            None => run_one(&spec, args.seed),
        };
        let mut out = std::io::stdout().lock();
        out.write_all(report.trace.as_deref().unwrap_or("").as_bytes())
            .map_err(|e| e.to_string())?;
        let verdict = match (report.violation_count, report.terminated) {
            (0, true) => "ok: no property violated; the liveness goal was reached".to_string(),
            (0, false) => {
                "stuck: no property violated, but the liveness goal was not reached".to_string()
            }
            (n, _) => format!("FAILED: {n} violation(s)"),
        };
        if let Some(timeline) = &report.timeline {
            let title = format!(
                "synod sim --algo {} --nodes {} --faults {} --seed {}: {}",
                spec.name(),
                spec.nodes,
                spec.faults,
                args.seed,
                verdict.split(':').next().unwrap_or("")
            );
            let write = |path: &PathBuf, text: String| {
                std::fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))
            };
            if let Some(path) = &args.svg {
                write(path, synod_sim::picture::svg(timeline, &title))?;
                eprintln!("drew the run into {}", path.display());
            }
            if let Some(path) = &args.html {
                write(path, synod_sim::picture::html(timeline, &title))?;
                eprintln!("drew the run into {}", path.display());
            }
        }
        writeln!(out, "{verdict}").map_err(|e| e.to_string())?;
        return Ok(if report.violation_count == 0 {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        });
    }
    let bar = if std::io::stderr().is_terminal() && args.runs >= 100 {
        let bar = ProgressBar::new(args.runs);
        bar.set_style(
            ProgressStyle::with_template(
                "{spinner} {pos}/{len} runs [{bar:30}] {per_sec} eta {eta} {msg}",
            )
            .expect("static template")
            .progress_chars("=> "),
        );
        bar
    } else {
        ProgressBar::hidden()
    };
    let bad = AtomicU64::new(0);
    let jobs = match args.jobs {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        j => j,
    };
    let summary = run_batch_parallel(&spec, args.seed, args.runs, jobs, &|r| {
        if r.violation_count > 0 {
            let n = bad.fetch_add(1, Ordering::Relaxed) + 1;
            bar.set_message(format!("{n} failing"));
        }
        bar.inc(1);
    });
    bar.finish_and_clear();
    let broken = summary.violations.values().any(|&n| n > 0);
    if args.json {
        println!("{}", summary.to_json());
    } else {
        print!("{}", summary.to_table());
        if let Some(seed) = summary.failing_seeds.first() {
            println!("  replay the first failure:     synod sim --algo {} --nodes {} --proposers {} --participants {} --faults {} --seed {seed} --runs 1 --trace", spec.name(), spec.nodes, spec.proposers, spec.participants, spec.faults);
        }
        println!("{}", batch_verdict(&summary, broken));
    }
    // Scripts and CI tell a broken property from a clean run by the exit
    // code alone; stuck runs are not failures: liveness is not promised
    // under every fault (FLP), and some algorithms are shown here to stall.
    Ok(if broken {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// The last line of a batch's table: what a reader should conclude.
fn batch_verdict(summary: &synod_sim::report::Summary, broken: bool) -> String {
    let runs = summary.runs;
    if broken {
        let bad: u64 = summary.violations.values().sum();
        format!("FAILED: {bad} property violation(s) in {runs} runs (exit 1)")
    } else if summary.stuck > 0 {
        format!(
            "stuck: {} of {runs} runs reached no decision, with no property violated",
            summary.stuck
        )
    } else {
        format!("ok: {runs} runs, no property violated, every run reached its goal")
    }
}

fn write_history(path: &PathBuf, ops: &[history::Operation]) -> Result<(), String> {
    let fail = |e: std::io::Error| format!("cannot write the history to {}: {e}", path.display());
    let file = std::fs::File::create(path).map_err(fail)?;
    let mut w = std::io::BufWriter::new(file);
    history::write_jsonl(ops, &mut w).map_err(fail)?;
    w.flush().map_err(fail)
}
