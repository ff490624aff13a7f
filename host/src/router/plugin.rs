//! Router plugins shipped with Wasmill.

use crate::error::Result;
use crate::router::Router;

/// The signals handler: SIGINT or SIGTERM closes the router gracefully (Watermill's
/// `SignalsHandler`). Add it with `router.add_plugin("signals", signals_handler)`.
pub fn signals_handler(router: &Router) -> Result<()> {
    let router = router.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("signal received, closing router");
        if let Err(e) = router.close().await {
            tracing::error!("router close: {e}");
        }
    });
    Ok(())
}

/// Resolves on the first SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = match signal(SignalKind::terminate()) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("cannot listen for SIGTERM: {e}");
                let _ = tokio::signal::ctrl_c().await;
                return;
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
