//! Serving the router over a listener with limits, so no client can hold
//! the server's connections without bound (slowloris):
//! - at most `max_connections` at once; one more is closed as it arrives;
//! - a request's headers must arrive within `header_read_timeout`, and an
//!   idle keep-alive connection is closed after the same time (hyper starts
//!   the header timer when the connection waits for its next request);
//! - a request takes at most `request_timeout` from its head to its
//!   answer's head, or it is answered 408.
//!
//! HTTP/1.1 only (TLS offers only `http/1.1` in ALPN): serving the
//! connection as HTTP/1.1 from its first byte is what puts it under the
//! header timer at once (a protocol sniff would wait for a first byte
//! without one). A stop waits for the requests in flight (graceful
//! shutdown) within the caller's own limit.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::http::StatusCode;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio_util::sync::CancellationToken;

/// The server's limits (`--http-*` flags).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub header_read_timeout: Duration,
    pub request_timeout: Duration,
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            max_connections: 4096,
        }
    }
}

/// Accepts connections from `listener` and serves `router` on each until
/// `shutdown` is cancelled; then stops accepting and lets every connection
/// finish its requests in flight.
pub async fn serve<L>(
    mut listener: L,
    router: Router,
    limits: Limits,
    shutdown: CancellationToken,
) -> std::io::Result<()>
where
    L: axum::serve::Listener,
{
    let router = router.layer(tower_http::timeout::TimeoutLayer::with_status_code(
        StatusCode::REQUEST_TIMEOUT,
        limits.request_timeout,
    ));
    let mut builder = auto::Builder::new(TokioExecutor::new()).http1_only();
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .keep_alive(true);
    let builder = Arc::new(builder);
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    let graceful = GracefulShutdown::new();
    // Exported from the start, so a dashboard shows 0 rather than nothing.
    metrics::counter!(crate::telemetry::CONNECTIONS_REFUSED).increment(0);
    loop {
        let (io, _peer) = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.cancelled() => break,
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            // Full: this one is closed at once (dropped), the others go on.
            metrics::counter!(crate::telemetry::CONNECTIONS_REFUSED).increment(1);
            continue;
        };
        let service = TowerToHyperService::new(router.clone());
        let conn = builder
            .serve_connection(TokioIo::new(io), service)
            .into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "HTTP connection ended with an error.");
            }
            drop(slot);
        });
    }
    // Stop accepting before waiting: nothing new queues up meanwhile.
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}
