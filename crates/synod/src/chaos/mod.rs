//! `synod chaos`: real member processes on this machine, a client workload
//! through etcd's API, faults injected into the processes, and the whole
//! history checked afterwards. The same run works against etcd
//! (`--target etcd`), for a side-by-side comparison.
//!
//! What a run does:
//! - **workloads** (one module each): a register on a few hot keys
//!   (`register.rs`: linearizable get, put, compare-and-swap, each operation
//!   recorded with its invoke and completion times; a write whose outcome
//!   the client could not learn is indefinite, and that client continues
//!   under a new identity); watchers on those keys that resume on another
//!   member (`watch.rs`); leases kept alive or left to expire (`lease.rs`);
//!   etcd's Lock around a blind and a fenced counter (`lock.rs`);
//! - **nemesis** (`nemesis.rs`): SIGKILL of the leader or of a random member
//!   and restart on its data, SIGSTOP/SIGCONT for longer than an election
//!   timeout, and as root partitions between network namespaces (`net.rs`);
//! - **checks**: linearizability of the history (the project's checker, as
//!   `synod check-history`), equal HashKV on every member at one revision,
//!   gap-free watchers, no kept-alive lease expired and no leased key kept
//!   too long, an exact fenced counter; and the figures: write
//!   unavailability after each leader kill and isolation, the errors the
//!   clients saw, overlapping lock holds.
//!
//! Everything random is drawn from `--seed`; the processes and the kernel
//! are not, so a seed repeats the schedule, not the interleaving.

mod cluster;
mod disk;
mod lease;
mod lock;
mod nemesis;
mod net;
mod register;
mod report;
mod watch;

use cluster::{channel, Cluster};
use nemesis::{faults, nemesis, Fault, Timeline};
use register::{client, final_reads, Records};

use clap::Args;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use synod_etcd::pb::etcdserverpb as pb;
use synod_sim::history::{OpKind, Operation};
use synod_sim::linearizability;

#[derive(Args)]
pub struct ChaosArgs {
    /// `synod` (this binary's `serve`) or `etcd` (the `etcd` on PATH).
    #[arg(long, default_value = "synod")]
    target: String,
    /// Members of the cluster.
    #[arg(long, default_value_t = 3)]
    members: usize,
    /// Seconds of workload and faults.
    #[arg(long, default_value_t = 20)]
    duration: u64,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Comma-separated: `kill` (a random member), `kill-leader`, `pause`,
    /// `partition` (a random minority cut off), `partition-leader` (the
    /// leader cut off), `churn` (a follower removed, wiped, added back as a
    /// learner and promoted), `disk-full` (one member's small disk filled
    /// for 2 s), `slow` (a member's link slowed to 1 Mbit/s for 2 s, with at
    /// most 200 ms queued: delay, and past it dropped packets); or `all`.
    /// Partitions, slow links and the small disk need root (network
    /// namespaces, `tc`, a tmpfs mount); without it `all` leaves them out
    /// and says so.
    #[arg(long, default_value = "all")]
    faults: String,
    /// Concurrent clients.
    #[arg(long, default_value_t = 8)]
    clients: usize,
    /// Watchers on the clients' keys, resuming on another member whenever
    /// their stream breaks (0: none).
    #[arg(long, default_value_t = 3)]
    watchers: usize,
    /// Lease clients: half keep their leases alive, half leave them to
    /// expire (0: none).
    #[arg(long, default_value_t = 4)]
    leases: usize,
    /// Clients taking etcd's Lock around two counters, one written blindly
    /// and one fenced by the lock key (0: none).
    #[arg(long, default_value_t = 3)]
    lockers: usize,
    /// Keys the clients share.
    #[arg(long, default_value_t = 4)]
    keys: usize,
    /// Where the members' data and logs, the history (`history.jsonl`) and
    /// the fault timeline go; a temporary directory if not given.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Print the summary as JSON.
    #[arg(long)]
    json: bool,
    /// Plant a deliberate bug in every synod member (`synod serve
    /// --unsafe-bug`; builds with the `broken` feature only), to see the run
    /// catch it: follower-reads-own-commit, reply-before-persist,
    /// vote-without-log-check, commit-old-term-by-counting,
    /// watch-resume-skips-one, short-leases, retry-unsettled-forwards.
    #[arg(long, value_name = "NAME")]
    unsafe_bug: Option<String>,
}

/// How long a client waits for one answer.
const OP_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a paused member stays paused: more than an election timeout.
const PAUSE: Duration = Duration::from_millis(1500);
/// How long a killed member stays down.
const DOWN: Duration = Duration::from_millis(1000);
/// How long a partition lasts: more than an election timeout.
const SPLIT: Duration = Duration::from_millis(2000);

/// A poisoned lock only means that a client task panicked; what it
/// recorded before stands.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Where a run is, on stderr: the end of a run can take a while.
fn progress(start: Instant, what: &str) {
    eprintln!(
        "synod chaos: {:.1} s: {what}",
        start.elapsed().as_secs_f64()
    );
}

/// Microseconds since the run started.
fn micros(start: Instant) -> u64 {
    start.elapsed().as_micros() as u64
}

/// Every member's HashKV at the revision the first member reports, or why a
/// member could not give one within 30 s (one that never reaches that
/// revision lost writes: a failed check, not a failed run).
async fn hashes(endpoints: &[String]) -> Result<Vec<Result<u32, String>>, String> {
    let mut kv = pb::kv_client::KvClient::new(channel(&endpoints[0]));
    let req = pb::RangeRequest {
        key: b"k0".to_vec(),
        ..Default::default()
    };
    let rev = kv
        .range(req)
        .await
        .map_err(|e| e.to_string())?
        .into_inner()
        .header
        .map_or(0, |h| h.revision);
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    for ep in endpoints {
        let mut m = pb::maintenance_client::MaintenanceClient::new(channel(ep));
        loop {
            match m.hash_kv(pb::HashKvRequest { revision: rev }).await {
                Ok(r) => {
                    out.push(Ok(r.into_inner().hash));
                    break;
                }
                Err(e) if Instant::now() > deadline => {
                    out.push(Err(format!("{ep}: {}", e.message())));
                    break;
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }
    Ok(out)
}

/// For each leader kill, microseconds from the kill to the first write
/// invoked after it and acknowledged.
fn unavailability(history: &[Operation], kills: &[u64]) -> Vec<u64> {
    kills
        .iter()
        .filter_map(|&at| {
            history
                .iter()
                .filter(|op| !matches!(op.kind, OpKind::Get { .. }) && op.invoke_us >= at)
                .filter_map(|op| op.complete_us)
                .min()
                .map(|done| done - at)
        })
        .collect()
}

pub fn run(a: ChaosArgs) -> Result<ExitCode, String> {
    if !matches!(a.target.as_str(), "synod" | "etcd") {
        return Err(format!(
            "--target: {:?} is neither synod nor etcd",
            a.target
        ));
    }
    if a.members == 0 || a.clients == 0 || a.keys == 0 {
        return Err("--members, --clients and --keys must be > 0".into());
    }
    let mut kinds = faults(&a.faults)?;
    if kinds.iter().any(|k| k.needs_net()) {
        if let Some(why) = net::Net::unavailable() {
            if a.faults
                .split(',')
                .any(|f| f.trim().starts_with("partition") || f.trim() == "slow")
            {
                return Err(format!(
                    "--faults: partitions and slow links cannot run here: {why}"
                ));
            }
            eprintln!("synod chaos: no partitions or slow links in this run: {why}");
            kinds.retain(|k| !k.needs_net());
        }
    }
    if kinds.contains(&Fault::DiskFull) {
        if let Some(why) = disk::SmallDisk::unavailable() {
            if a.faults.split(',').any(|f| f.trim() == "disk-full") {
                return Err(format!("--faults: disk-full cannot run here: {why}"));
            }
            eprintln!("synod chaos: no full disk in this run: {why}");
            kinds.retain(|k| *k != Fault::DiskFull);
        }
    }
    // Without --out, a run that passes leaves nothing behind; one that fails
    // keeps its evidence and says where.
    let keep = a.out.is_some();
    let dir = match &a.out {
        Some(d) => d.clone(),
        None => std::env::temp_dir().join(format!("synod-chaos-{}", std::process::id())),
    };
    if dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let runtime = tokio::runtime::Runtime::new().map_err(|e| format!("tokio runtime: {e}"))?;
    // Interrupted, the run drops its cluster and network on the way out:
    // no member process or namespace outlives it.
    let result = runtime.block_on(async {
        tokio::select! {
            r = chaos(a, kinds, dir.clone()) => r,
            s = crate::signals::stop_signal() => Err(format!("stopped by {}", s?)),
        }
    });
    if !keep && matches!(result, Ok(ExitCode::SUCCESS)) {
        let _ = std::fs::remove_dir_all(&dir);
    }
    result
}

async fn chaos(a: ChaosArgs, kinds: Vec<Fault>, dir: PathBuf) -> Result<ExitCode, String> {
    let net = if kinds.iter().any(|k| k.needs_net()) {
        Some(net::Net::create(a.members)?)
    } else {
        None
    };
    let mut cluster = Cluster::new(&a.target, &dir, a.members, net)?;
    if let Some(bug) = &a.unsafe_bug {
        if a.target != "synod" {
            return Err("--unsafe-bug plants bugs in synod members only".into());
        }
        // Refused here, before any member starts, if this build cannot.
        crate::serve_cmd::unsafe_bugs(Some(bug))?;
        cluster.bug = Some(bug.clone());
    }
    if kinds.contains(&Fault::DiskFull) {
        let i = (a.seed % a.members as u64) as usize;
        let small = disk::SmallDisk::mount(&dir.join(&cluster.members[i].name))?;
        cluster.small_disk = Some((i, small));
    }
    for i in 0..a.members {
        cluster.start(i)?;
    }
    let endpoints: Vec<String> = (0..a.members).map(|i| cluster.endpoint(i)).collect();
    // The cluster must take a write before the clock starts.
    let ready = Instant::now() + Duration::from_secs(30);
    let ready_revision = loop {
        let mut kv = pb::kv_client::KvClient::new(channel(&endpoints[0]));
        let req = pb::PutRequest {
            key: b"chaos/ready".to_vec(),
            ..Default::default()
        };
        if let Ok(r) = kv.put(req).await {
            break r.into_inner().header.map_or(0, |h| h.revision);
        }
        if Instant::now() > ready {
            return Err(format!(
                "the {} cluster did not take a write within 30 s (logs in {})",
                a.target,
                dir.display()
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let start = Instant::now();
    let until = start + Duration::from_secs(a.duration);
    let records = Arc::new(Records::default());
    let mut workers = Vec::new();
    for w in 0..a.clients {
        let eps = endpoints.clone();
        workers.push(tokio::spawn(client(
            w,
            a.seed,
            eps,
            a.keys,
            start,
            until,
            records.clone(),
        )));
    }
    let (stop_keepers, stop) = tokio::sync::watch::channel(false);
    let lease_clients: Vec<_> = (0..a.leases)
        .map(|c| {
            let eps = endpoints.clone();
            if c % 2 == 0 {
                tokio::spawn(lease::keeper(c, eps, start, stop.clone()))
            } else {
                tokio::spawn(lease::expirer(c, eps, start, until))
            }
        })
        .collect();
    let lockers: Vec<_> = (0..a.lockers)
        .map(|c| tokio::spawn(lock::locker(c, a.seed, endpoints.clone(), start, until)))
        .collect();
    // Watchers follow the register's keys from the first revision of the
    // run until the end marker, however long recovery takes (bounded).
    let watch_from = ready_revision + 1;
    let watch_deadline = until + Duration::from_secs(90);
    let watchers: Vec<_> = (0..a.watchers)
        .map(|w| {
            let eps = endpoints.clone();
            tokio::spawn(watch::watcher(
                w,
                a.seed,
                eps,
                watch_from,
                until,
                watch_deadline,
            ))
        })
        .collect();
    let mut rng = ChaCha8Rng::seed_from_u64(a.seed);
    let mut timeline = Timeline {
        events: Vec::new(),
        leader_kills: Vec::new(),
        leader_isolations: Vec::new(),
        windows: Vec::new(),
    };
    nemesis(&mut cluster, &kinds, &mut rng, start, until, &mut timeline).await?;
    for w in workers {
        let _ = w.await;
    }
    // Heal everything before the final reads: every member runs again.
    for name in cluster.restart_stopped()? {
        let line = format!("{name} had stopped: restarted for the final checks");
        timeline.events.push((micros(start), line));
    }
    progress(start, "workload over; final reads");
    final_reads(&endpoints, a.keys, start, &records.history).await?;
    progress(start, "waiting for the watchers to see the end");
    watch::write_end(&endpoints, start).await?;
    let mut watch_logs = Vec::new();
    for w in watchers {
        watch_logs.push(w.await.map_err(|e| format!("watcher: {e}"))?);
    }
    let reference = watch::watcher(
        0,
        a.seed,
        endpoints.clone(),
        watch_from,
        Instant::now(),
        Instant::now() + Duration::from_secs(30),
    )
    .await;
    let watch_problems = watch::check(&reference, &watch_logs, &lock(&records.acked));
    progress(start, "waiting for the lockers");
    let mut lock_logs = Vec::new();
    for c in lockers {
        lock_logs.push(c.await.map_err(|e| format!("locker: {e}"))?);
    }
    let plain = lock::final_value(&endpoints, lock::PLAIN).await?;
    let fenced = lock::final_value(&endpoints, lock::FENCED).await?;
    let locks = lock::check(&lock_logs, plain, fenced);
    progress(start, "waiting for the lease clients");
    let _ = stop_keepers.send(true);
    let mut lease_logs = Vec::new();
    for c in lease_clients {
        lease_logs.push(c.await.map_err(|e| format!("lease client: {e}"))?);
    }
    let (lease_problems, overstays) = lease::check(&lease_logs, &timeline.windows);
    progress(start, "comparing HashKV");
    let hashes = hashes(&endpoints).await?;
    progress(start, "checking the history");
    let history = std::mem::take(&mut *lock(&records.history));
    let file = std::fs::File::create(dir.join("history.jsonl")).map_err(|e| e.to_string())?;
    synod_sim::history::write_jsonl(&history, std::io::BufWriter::new(file))
        .map_err(|e| e.to_string())?;
    let lines: String = timeline
        .events
        .iter()
        .map(|(t, e)| format!("{:.3}s {e}\n", *t as f64 / 1e6))
        .collect();
    std::fs::write(dir.join("timeline.txt"), lines).map_err(|e| e.to_string())?;

    let verdict = linearizability::check(&history);
    let errors = std::mem::take(&mut *lock(&records.errors));
    let outages = std::mem::take(&mut *lock(&records.outages));
    let report = report::Report {
        args: &a,
        kinds: &kinds,
        timeline: &timeline,
        history: &history,
        verdict: &verdict,
        errors: &errors,
        outages: &outages,
        hashes: &hashes,
        watch_logs: &watch_logs,
        reference: &reference,
        watch_problems: &watch_problems,
        lease_logs: &lease_logs,
        overstays: &overstays,
        lease_problems: &lease_problems,
        lock_logs: &lock_logs,
        locks: &locks,
        dir: &dir,
    };
    if a.json {
        println!("{}", report.json());
    } else {
        report.print();
    }
    let passed = report.passed();
    drop(cluster);
    Ok(if passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
