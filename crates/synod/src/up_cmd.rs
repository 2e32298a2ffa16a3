//! `synod up`: a local cluster on this machine, one `synod serve` process
//! per member, until Ctrl-C. Members die alone: one that fails to start or
//! crashes is reported, and the others go on serving. The members share the
//! machine's cores: each one's client API runs on its share of them
//! (`TOKIO_WORKER_THREADS`, which a user may set for all of them instead).

use crate::signals::stop_signal;
use clap::Args;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Prints a line to stdout, ignoring a reader that has gone away: the
/// members must still be stopped when the terminal or pipe is closed.
macro_rules! say {
    ($($arg:tt)*) => {{
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

#[derive(Args)]
pub struct UpArgs {
    /// Where the members keep their data (one directory each). Restarting
    /// with the same directory recovers the cluster's data.
    #[arg(long, default_value = "synod-data")]
    data_dir: PathBuf,
    /// Number of members (odd: 1, 3, 5, ...).
    #[arg(long, default_value_t = 3)]
    members: usize,
    /// Client port of the first member; member k listens on BASE + 10000*k for
    /// clients and one above that for peers (2379/2380, 12379/12380, ...).
    #[arg(long, default_value_t = 2379)]
    base_port: u16,
    /// The consensus engine every member runs (`synod serve --engine`).
    #[arg(long, default_value = "raft")]
    engine: synod_server::engines::EngineChoice,
}

/// One member's process and what it last said on stderr.
struct Proc {
    name: String,
    client: String,
    data_dir: PathBuf,
    child: Child,
    last_words: Arc<Mutex<String>>,
    exited: Option<ExitStatus>,
}

impl Proc {
    /// Reports the member as down if its process has ended.
    fn check(&mut self) -> bool {
        if self.exited.is_none() {
            if let Ok(Some(status)) = self.child.try_wait() {
                self.exited = Some(status);
                let why = self
                    .last_words
                    .lock()
                    .map(|w| w.clone())
                    .unwrap_or_default();
                say!(
                    "synod: {} (pid {}) is down: {status}{}{why}",
                    self.name,
                    self.child.id(),
                    if why.is_empty() { "" } else { ": " }
                );
            }
        }
        self.exited.is_none()
    }
}

/// The cluster token of the cluster in `dir`, made on its first start: every
/// `synod up` cluster gets its own cluster id, so a member given another
/// cluster's data directory refuses it.
fn cluster_token(dir: &Path) -> Result<String, String> {
    let path = dir.join("cluster-token");
    match std::fs::read_to_string(&path) {
        Ok(t) => Ok(t.trim().to_string()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos());
            let token = format!("synod-{:x}-{:x}", nanos, std::process::id());
            std::fs::write(&path, format!("{token}\n"))
                .map_err(|e| format!("{}: cannot write: {e}", path.display()))?;
            Ok(token)
        }
        Err(e) => Err(format!("{}: cannot read: {e}", path.display())),
    }
}

/// tokio's own setting for the threads of a member's client API runtime.
pub(crate) const API_THREADS_VAR: &str = "TOKIO_WORKER_THREADS";

/// How many client API threads each member gets, unless the user chose
/// (`TOKIO_WORKER_THREADS`): the members share this machine's cores, so
/// each gets its part of them (at least one) rather than a thread per core
/// that only the scheduler would share out. On two cores, three members with
/// one API thread each took 4-25% more puts than with two in eight of ten
/// rounds (BENCHMARKS.md).
fn api_threads(members: usize) -> Option<usize> {
    if std::env::var_os(API_THREADS_VAR).is_some() {
        return None;
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    Some((cores / members.max(1)).max(1))
}

pub fn run(args: UpArgs) -> Result<ExitCode, String> {
    if args.members == 0 || args.members > 6 {
        return Err(format!(
            "--members must be between 1 and 6, not {}",
            args.members
        ));
    }
    let ports: Vec<(u16, u16)> = (0..args.members as u32)
        .map(|k| {
            let c = u32::from(args.base_port) + 10_000 * k;
            u16::try_from(c + 1).map(|p| (c as u16, p)).map_err(|_| {
                format!(
                    "--base-port {} leaves no room for {} members",
                    args.base_port, args.members
                )
            })
        })
        .collect::<Result<_, _>>()?;
    std::fs::create_dir_all(&args.data_dir)
        .map_err(|e| format!("{}: cannot create: {e}", args.data_dir.display()))?;
    let token = cluster_token(&args.data_dir)?;
    let initial_cluster = ports
        .iter()
        .enumerate()
        .map(|(i, (_, p))| format!("synod-{}=http://127.0.0.1:{p}", i + 1))
        .collect::<Vec<_>>()
        .join(",");
    let exe = std::env::current_exe().map_err(|e| format!("cannot find the synod binary: {e}"))?;
    let api_threads = api_threads(args.members);
    let mut procs = Vec::new();
    for (i, (c, p)) in ports.iter().enumerate() {
        let name = format!("synod-{}", i + 1);
        let data_dir = args.data_dir.join(format!("member-{}", i + 1));
        let client = format!("http://127.0.0.1:{c}");
        let peer = format!("http://127.0.0.1:{p}");
        let mut cmd = Command::new(&exe);
        stop_with_parent(&mut cmd);
        if let Some(n) = api_threads {
            cmd.env(API_THREADS_VAR, n.to_string());
        }
        let mut child = cmd
            .arg("serve")
            .args(["--engine", args.engine.name()])
            .args(["--name", &name, "--data-dir"])
            .arg(&data_dir)
            .args([
                "--listen-client-urls",
                &client,
                "--advertise-client-urls",
                &client,
            ])
            .args([
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
            ])
            .args(["--initial-cluster", &initial_cluster])
            .args(["--initial-cluster-token", &token])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start {name}: {e}"))?;
        let last_words = Arc::new(Mutex::new(String::new()));
        relay_stderr(&name, child.stderr.take(), last_words.clone());
        procs.push(Proc {
            name,
            client,
            data_dir,
            child,
            last_words,
            exited: None,
        });
    }
    let runtime = tokio::runtime::Runtime::new().map_err(|e| format!("tokio runtime: {e}"))?;
    runtime.block_on(async {
        wait_until_serving(&mut procs, &ports).await;
        let up = procs.iter().filter(|p| p.exited.is_none()).count();
        if up == 0 {
            return Err("no member could start (see above)".to_string());
        }
        say!(
            "synod: {up} of {} members up, data in {}",
            procs.len(),
            args.data_dir.display()
        );
        for p in &procs {
            let state = match p.exited {
                None => "up".to_string(),
                Some(s) => format!("down ({s})"),
            };
            say!(
                "  {}  pid {}  clients {}  data {}  {state}",
                p.name,
                p.child.id(),
                p.client,
                p.data_dir.display()
            );
        }
        let endpoints: Vec<String> = ports
            .iter()
            .map(|(c, _)| format!("127.0.0.1:{c}"))
            .collect();
        say!(
            "try:   ETCDCTL_API=3 etcdctl --endpoints={} put greeting hello",
            endpoints.join(",")
        );
        say!("stop:  Ctrl-C (or SIGTERM)");
        let signal = tokio::select! {
            s = stop_signal() => s?,
            () = watch_members(&mut procs) => "every member is down",
        };
        say!("synod: {signal}: stopping");
        stop_all(&mut procs).await;
        say!("synod: stopped");
        Ok(ExitCode::SUCCESS)
    })
}

/// Prints a member's stderr with its name, and keeps its last line (a member
/// that refuses to start says why there).
fn relay_stderr(name: &str, stderr: Option<std::process::ChildStderr>, last: Arc<Mutex<String>>) {
    let Some(stderr) = stderr else { return };
    let name = name.to_string();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { return };
            let _ = writeln!(std::io::stderr(), "{name} | {line}");
            if let Ok(mut l) = last.lock() {
                *l = line;
            }
        }
    });
}

/// Waits until every member takes client connections or has died.
async fn wait_until_serving(procs: &mut [Proc], ports: &[(u16, u16)]) {
    let deadline = Instant::now() + Duration::from_secs(30);
    for (p, (c, _)) in procs.iter_mut().zip(ports) {
        while p.check() && Instant::now() < deadline {
            if tokio::net::TcpStream::connect(("127.0.0.1", *c))
                .await
                .is_ok()
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Returns once no member is left running, reporting each that dies.
async fn watch_members(procs: &mut [Proc]) {
    loop {
        let mut alive = 0;
        for p in procs.iter_mut() {
            if p.check() {
                alive += 1;
            }
        }
        if alive == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Asks every member to stop as SIGTERM does, waits for them, and kills any
/// that has not stopped within ten seconds.
async fn stop_all(procs: &mut [Proc]) {
    for p in procs.iter_mut().filter(|p| p.exited.is_none()) {
        terminate(&p.child);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    for p in procs.iter_mut() {
        while p.exited.is_none() {
            if let Ok(Some(s)) = p.child.try_wait() {
                p.exited = Some(s);
                break;
            }
            if Instant::now() >= deadline {
                let _ = p.child.kill();
                p.exited = p.child.wait().ok();
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn terminate(child: &Child) {
    #[cfg(unix)]
    {
        // SAFETY: kill(2) on a child we spawned and have not yet reaped, so
        // its pid cannot have been reused.
        unsafe {
            libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
        }
    }
    #[cfg(not(unix))]
    {
        let _ = child;
    }
}

/// Members stop (SIGTERM, an orderly stop) when `synod up` dies, however it
/// dies: a SIGKILLed `synod up` would otherwise leave three members running
/// with nobody to stop them.
fn stop_with_parent(cmd: &mut Command) {
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::process::CommandExt;
        let parent = std::process::id() as libc::pid_t;
        // SAFETY: between fork and exec the closure makes only
        // async-signal-safe calls (prctl, getppid) and does not allocate.
        unsafe {
            cmd.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // The parent may have died before prctl took effect.
                if libc::getppid() != parent {
                    return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
                }
                Ok(())
            });
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = cmd;
}
