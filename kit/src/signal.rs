//! SIGINT / SIGTERM as futures, so a daemon's `main` can start its graceful drain on the first
//! and give up waiting on the second.

/// Resolves on the first SIGINT or SIGTERM (logged, with `what` the daemon does next).
pub async fn terminated(what: &str) {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM: {what}"),
                _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: {what}"),
            }
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot install a SIGTERM handler; only SIGINT stops this process");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// From now on, a further SIGINT or SIGTERM exits at once with status 130: an operator who
/// signals twice does not want to wait for the drain.
pub fn exit_on_second_signal() {
    tokio::spawn(async {
        terminated("exiting without waiting for the drain").await;
        std::process::exit(130);
    });
}
