//! The process-wide shutdown signal.

use std::future::Future;

/// Resolves on SIGTERM or SIGINT (Ctrl-C).
///
/// The handlers are installed when this function is called, not when the future is first
/// polled: a SIGTERM that arrives while the pipeline starts must still mean "shut down
/// gracefully", never the default "die".
pub fn signal() -> impl Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).expect("install SIGTERM handler");
        let mut int = signal(SignalKind::interrupt()).expect("install SIGINT handler");
        async move {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM received"),
                _ = int.recv() => tracing::info!("interrupt received"),
            }
        }
    }
    #[cfg(not(unix))]
    {
        async {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
