//! Stopping on a signal: SIGINT (Ctrl-C) and SIGTERM (what systemd,
//! Kubernetes and Docker send) stop a member or a cluster the same orderly
//! way, then the process exits 0.

/// Waits for SIGINT or SIGTERM and says which came.
pub async fn stop_signal() -> Result<&'static str, String> {
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
