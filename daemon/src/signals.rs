//! Stopping a daemon on SIGTERM (systemd, `stripefs down`, kill) or
//! SIGINT (Ctrl-C).

use tokio_util::sync::CancellationToken;

/// Waits for SIGTERM or SIGINT, logs which, then cancels `shutdown`.
/// Without a SIGTERM handler (it cannot be installed), waits for Ctrl-C alone.
pub async fn cancel_on_signal(shutdown: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("cannot catch SIGTERM: {e}");
            let _ = tokio::signal::ctrl_c().await;
            shutdown.cancel();
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received; shutting down"),
        _ = term.recv() => tracing::info!("SIGTERM received; shutting down"),
    }
    shutdown.cancel();
}
