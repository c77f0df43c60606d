//! `orderlog replay --into DIR`: rebuilds every view from offset zero into a
//! fresh directory with the same [`Projector`] `serve` runs (reading every
//! partition, no consumer group, no dead-lettering: nothing in Kafka
//! changes), and reports the views' digests and the rate.
//!
//! The progress figures and their text are computed here ([`Progress`]); the
//! binary only decides where to draw them.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::{AuditError, Source, log};
use crate::projections::query::{self, ViewDigest};
use crate::projections::{Assignment, Projector, ProjectorConfig};
use crate::store::Store;

/// How far a replay is.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Progress {
    /// Records folded (projected or refused).
    pub done: u64,
    /// Records in the log when the replay started.
    pub total: u64,
    pub elapsed: Duration,
}

impl Progress {
    pub fn rate(&self) -> f64 {
        let s = self.elapsed.as_secs_f64();
        if s > 0.0 { self.done as f64 / s } else { 0.0 }
    }

    /// Time left at the rate so far; `None` before anything is done.
    pub fn eta(&self) -> Option<Duration> {
        let rate = self.rate();
        (rate > 0.0)
            .then(|| Duration::from_secs_f64(self.total.saturating_sub(self.done) as f64 / rate))
    }

    /// `[#####.....]  5000/10000 events  50%  2500 events/s  ETA 2s`
    pub fn line(&self, bar_width: usize) -> String {
        let frac = if self.total == 0 {
            1.0
        } else {
            (self.done as f64 / self.total as f64).min(1.0)
        };
        let filled = (frac * bar_width as f64).round() as usize;
        let eta = match self.eta() {
            Some(d) => format!("ETA {}s", d.as_secs()),
            None => "ETA -".to_owned(),
        };
        format!(
            "[{}{}] {}/{} events {:>3.0}% {:.0} events/s {eta}",
            "#".repeat(filled),
            ".".repeat(bar_width - filled.min(bar_width)),
            self.done,
            self.total,
            frac * 100.0,
            self.rate()
        )
    }
}

/// What a replay built.
#[derive(Debug, Clone, Serialize)]
pub struct ReplayReport {
    pub projected: u64,
    /// Records the projector refused (undecodable, out of sequence, unchained).
    pub refused: u64,
    #[serde(skip)]
    pub elapsed: Duration,
    #[serde(skip)]
    pub digest: ViewDigest,
}

impl ReplayReport {
    pub fn events_per_sec(&self) -> f64 {
        let s = self.elapsed.as_secs_f64();
        if s > 0.0 {
            (self.projected + self.refused) as f64 / s
        } else {
            0.0
        }
    }

    pub fn to_text(&self) -> String {
        let mut s = String::new();
        for (view, (rows, digest)) in &self.digest.per_view {
            s.push_str(&format!("{view:<16} {rows:>9} rows  {digest}\n"));
        }
        s.push_str(&format!(
            "{:<16} {:>9}       {}\n",
            "total", "", self.digest.total
        ));
        s.push_str(&format!(
            "replayed {} events ({} refused) in {:.1} s: {:.0} events/s\n",
            self.projected + self.refused,
            self.refused,
            self.elapsed.as_secs_f64(),
            self.events_per_sec()
        ));
        s
    }
}

/// Refuses a directory with anything in it; creates it if missing.
pub fn prepare_dir(into: &Path) -> Result<(), AuditError> {
    let io = |source| AuditError::Io {
        path: into.display().to_string(),
        source,
    };
    if into.exists() {
        if std::fs::read_dir(into).map_err(io)?.next().is_some() {
            return Err(AuditError::NotEmpty(into.display().to_string()));
        }
    } else {
        std::fs::create_dir_all(into).map_err(io)?;
    }
    Ok(())
}

/// Projects the whole log into `into` (which must be empty) until caught up,
/// calling `progress` about every 200 ms. `stall` bounds a wait without
/// progress.
pub fn run(
    source: &Source,
    into: &Path,
    stall: Duration,
    mut progress: impl FnMut(Progress),
) -> Result<ReplayReport, AuditError> {
    let log_keys = source.log_keys.clone().ok_or(AuditError::NoLogKeys)?;
    prepare_dir(into)?;
    let partitions: Vec<i32> = (0..log::partition_count(source)? as i32).collect();
    let total: u64 = log::watermarks(source, &partitions)?
        .values()
        .map(|(low, high)| (high - low).max(0) as u64)
        .sum();
    let store = Store::open(into)?;
    let started = Instant::now();
    // Erased orders' rows written before their erasure are purged from the
    // new directory's disk (the last purge runs when it stops).
    let stop = crate::shutdown::CancellationToken::new();
    let purger = crate::erasure::Purger::start(store.clone(), stop.child_token())?;
    let projector = Projector::start(
        store.clone(),
        ProjectorConfig {
            settings: source.settings.clone(),
            topic: source.topic.clone(),
            assignment: Assignment::All,
            batch_max: 4096,
            max_rate: 0,
            dead_letter: false,
            idempotency_ttl: crate::service::state::DEFAULT_IDEMPOTENCY_TTL,
            purge: Some(purger.status.clone()),
            log_keys: std::sync::Arc::new(crate::crypto::logkey::SharedLogKeys::new(
                (*log_keys).clone(),
            )),
        },
        stop.child_token(),
    )?;
    let counts = |p: &Projector| {
        (
            p.status.projected.load(Ordering::Relaxed),
            p.status.dead_lettered.load(Ordering::Relaxed),
        )
    };
    let mut last = (0, 0);
    let mut last_change = Instant::now();
    loop {
        if projector.wait_caught_up(Duration::from_millis(200)) {
            break;
        }
        let now = counts(&projector);
        progress(Progress {
            done: now.0 + now.1,
            total,
            elapsed: started.elapsed(),
        });
        if now != last {
            last = now;
            last_change = Instant::now();
        } else if last_change.elapsed() > stall {
            return Err(AuditError::Stalled(stall));
        }
        if !projector.is_running() {
            projector.stop()?;
            return Err(AuditError::ProjectorStopped);
        }
    }
    let (projected, refused) = counts(&projector);
    let elapsed = started.elapsed();
    // Caught up: every record is read. (The watermarks also counted the
    // writers' barrier records, which are not events.)
    progress(Progress {
        done: projected + refused,
        total: projected + refused,
        elapsed,
    });
    projector.stop()?;
    purger
        .stop()
        .map_err(crate::projections::projector::ProjectorError::from)?;
    let digest = query::digest(&store)?;
    Ok(ReplayReport {
        projected,
        refused,
        elapsed,
        digest,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_line_shows_rate_eta_and_bar() {
        let p = Progress {
            done: 500,
            total: 1000,
            elapsed: Duration::from_secs(2),
        };
        assert_eq!(p.rate(), 250.0);
        assert_eq!(p.eta(), Some(Duration::from_secs(2)));
        assert_eq!(
            p.line(10),
            "[#####.....] 500/1000 events  50% 250 events/s ETA 2s"
        );
        let start = Progress {
            done: 0,
            total: 10,
            elapsed: Duration::ZERO,
        };
        assert_eq!(start.eta(), None);
        assert!(start.line(4).starts_with("[....] 0/10"));
    }

    #[test]
    fn a_non_empty_directory_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        prepare_dir(dir.path()).unwrap();
        std::fs::write(dir.path().join("CURRENT"), b"x").unwrap();
        assert!(matches!(
            prepare_dir(dir.path()),
            Err(AuditError::NotEmpty(_))
        ));
        let fresh = dir.path().join("new");
        prepare_dir(&fresh).unwrap();
        assert!(fresh.is_dir());
    }
}
