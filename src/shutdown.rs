//! One shutdown signal for a node, and the retry pause of its background
//! loops.
//!
//! [`crate::app::App`] holds the root [`CancellationToken`]; every part it
//! starts (the HTTP server, the writers, the projector, the subject indexer,
//! the key follower, the purger, retention) runs under a child of it, and
//! parts with threads of their own (the projector's lag watcher and writer,
//! the writers' group thread, the members reader) under children of theirs.
//! `App::stop` cancels them one by one, in the order that lets each drain
//! into the next, each within a time limit; cancelling the root (or dropping
//! the app) stops them all at once.
//!
//! A blocking thread runs as a [`Worker`]: it checks its token between units
//! of work, and its stop reports a panic as an error instead of success.
//! Tasks on the runtime are tracked by their owner (`Service` keeps a
//! `TaskTracker`).
//!
//! What must never live here: the parts' own logic. This module only knows
//! tokens, threads and pauses.

use std::fmt;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
pub use tokio_util::sync::CancellationToken;

/// A background thread running under a shutdown token.
pub struct Worker<T: Send + 'static = ()> {
    name: &'static str,
    token: CancellationToken,
    thread: Option<JoinHandle<T>>,
}

impl<T: Send + 'static> fmt::Debug for Worker<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Worker")
            .field("name", &self.name)
            .field("cancelled", &self.token.is_cancelled())
            .finish()
    }
}

/// A worker's thread ended by panicking.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the {name} thread panicked: {message}")]
pub struct Panicked {
    pub name: &'static str,
    pub message: String,
}

impl<T: Send + 'static> Worker<T> {
    /// Runs `run` on a thread named `name`, handing it `token`.
    pub fn spawn(
        name: &'static str,
        token: CancellationToken,
        run: impl FnOnce(CancellationToken) -> T + Send + 'static,
    ) -> std::io::Result<Self> {
        let t = token.clone();
        let thread = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || run(t))?;
        Ok(Self {
            name,
            token,
            thread: Some(thread),
        })
    }

    pub fn token(&self) -> &CancellationToken {
        &self.token
    }

    /// True once the thread has ended (its run returned or panicked).
    pub fn is_finished(&self) -> bool {
        self.thread.as_ref().is_none_or(|t| t.is_finished())
    }

    /// Cancels the worker's token and waits for its thread to end; a panic
    /// is an error, with the panic's message.
    pub fn stop(mut self) -> Result<T, Panicked> {
        self.token.cancel();
        self.join()
    }

    /// [`Worker::stop`] from a task: the join runs off the runtime, and a
    /// failure is logged.
    pub async fn stop_from_task(self) {
        let name = self.name;
        self.token.cancel();
        match tokio::task::spawn_blocking(move || self.stop()).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "Stopping a thread failed."),
            Err(e) => tracing::error!(thread = name, error = %e, "Joining a thread failed."),
        }
    }

    fn join(&mut self) -> Result<T, Panicked> {
        let thread = self.thread.take().expect("joined once");
        thread.join().map_err(|panic| Panicked {
            name: self.name,
            message: panic_message(panic.as_ref()),
        })
    }
}

impl<T: Send + 'static> Drop for Worker<T> {
    /// A worker dropped without `stop` is cancelled, and left to end on its
    /// own (a drop must not block).
    fn drop(&mut self) {
        self.token.cancel();
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".into())
}

/// Sleeps for `pause`, or less if `token` is cancelled meanwhile; answers
/// whether it was. For blocking threads (a task awaits
/// `token.cancelled()` in a `select!` instead).
pub fn sleep(token: &CancellationToken, pause: Duration) -> bool {
    const TICK: Duration = Duration::from_millis(20);
    let until = Instant::now() + pause;
    loop {
        if token.is_cancelled() {
            return true;
        }
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        std::thread::sleep(left.min(TICK));
    }
}

/// Waits `pause` on the runtime, or less if `token` is cancelled meanwhile;
/// answers whether it was.
pub async fn pause(token: &CancellationToken, pause: Duration) -> bool {
    tokio::select! {
        () = token.cancelled() => true,
        () = tokio::time::sleep(pause) => false,
    }
}

/// The pause between retries of a background loop: doubling from `min` up
/// to `max`, back to `min` after a success. One policy for every loop that
/// retries forever (the purger, the indexer, the key follower, the
/// projector, the writers' catch-up), from backon.
#[derive(Debug)]
pub struct Retry {
    builder: ExponentialBuilder,
    delays: ExponentialBackoff,
}

impl Retry {
    pub fn new(min: Duration, max: Duration) -> Self {
        let builder = ExponentialBuilder::default()
            .with_min_delay(min)
            .with_max_delay(max)
            .with_factor(2.0)
            .without_max_times();
        Self {
            delays: builder.build(),
            builder,
        }
    }

    /// The pause before the next attempt.
    pub fn pause(&mut self) -> Duration {
        self.delays
            .next()
            .expect("a backoff without a limit of attempts never ends")
    }

    /// After a success: the next failure pauses `min` again.
    pub fn reset(&mut self) {
        self.delays = self.builder.build();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_pauses_double_up_to_the_limit_and_reset_after_a_success() {
        let mut r = Retry::new(Duration::from_millis(100), Duration::from_millis(500));
        let pauses: Vec<u64> = (0..5).map(|_| r.pause().as_millis() as u64).collect();
        assert_eq!(pauses, [100, 200, 400, 500, 500]);
        r.reset();
        assert_eq!(r.pause(), Duration::from_millis(100));
    }

    #[test]
    fn a_worker_stops_when_cancelled_and_reports_a_panic_as_an_error() {
        let w = Worker::spawn("test-loop", CancellationToken::new(), |t| {
            let mut turns = 0u32;
            while !sleep(&t, Duration::from_secs(5)) {
                turns += 1;
            }
            turns
        })
        .unwrap();
        assert_eq!(w.stop(), Ok(0));

        let w = Worker::spawn("test-panic", CancellationToken::new(), |_| -> () {
            panic!("boom");
        })
        .unwrap();
        let e = w.stop().unwrap_err();
        assert_eq!(e.name, "test-panic");
        assert_eq!(e.message, "boom");
    }

    #[test]
    fn cancelling_a_parent_stops_its_children() {
        let root = CancellationToken::new();
        let w = Worker::spawn("test-child", root.child_token(), |t| {
            while !sleep(&t, Duration::from_secs(5)) {}
        })
        .unwrap();
        root.cancel();
        assert!(w.token().is_cancelled());
        assert_eq!(w.stop(), Ok(()));
    }
}
