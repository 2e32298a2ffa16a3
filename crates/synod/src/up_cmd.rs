//! `synod up`: a local cluster on this machine, until Ctrl-C.

use clap::Args;
use std::path::PathBuf;
use std::process::ExitCode;
use synod_server::cluster::{start_cluster, ClusterSpec};

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
    let spec = ClusterSpec::local(args.data_dir.clone(), &ports);
    let runtime = tokio::runtime::Runtime::new().map_err(|e| format!("tokio runtime: {e}"))?;
    runtime.block_on(async {
        let members = start_cluster(&spec).await?;
        let endpoints: Vec<String> = spec.members.iter().map(|m| m.client.to_string()).collect();
        println!(
            "synod: {} members up, data in {}",
            members.len(),
            args.data_dir.display()
        );
        for m in &spec.members {
            println!("  {}: clients {}  peers {}", m.name, m.client, m.peer);
        }
        println!(
            "try:   ETCDCTL_API=3 etcdctl --endpoints={} put greeting hello",
            endpoints.join(",")
        );
        println!("stop:  Ctrl-C (or SIGTERM)");
        let signal = stop_signal().await?;
        println!("synod: {signal}: stopping");
        for m in members {
            m.stop().await;
        }
        println!("synod: stopped");
        Ok(ExitCode::SUCCESS)
    })
}

/// Waits for SIGINT (Ctrl-C) or SIGTERM, which systemd, Kubernetes and
/// Docker send to stop a service: both stop the members the same orderly
/// way (open requests answered or failed, streams closed), then exit 0.
async fn stop_signal() -> Result<&'static str, String> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term =
            signal(SignalKind::terminate()).map_err(|e| format!("waiting for SIGTERM: {e}"))?;
        tokio::select! {
            r = tokio::signal::ctrl_c() => r.map(|()| "SIGINT").map_err(|e| format!("waiting for Ctrl-C: {e}")),
            _ = term.recv() => Ok("SIGTERM"),
        }
    }
    #[cfg(not(unix))]
    {
        tokio::signal::ctrl_c()
            .await
            .map(|()| "Ctrl-C")
            .map_err(|e| format!("waiting for Ctrl-C: {e}"))
    }
}
