//! How slowly an upload may arrive, the same for HTTP PUTs and gRPC
//! Writes: it may pause for the idle timeout at most, and after its first
//! idle timeout it must keep up [`MIN_BODY_RATE`] on average. Only bytes
//! count: a client that sends empty frames or empty messages now and then
//! makes no progress, so it cannot hold a connection, a writer's file and
//! its room on disk for as long as it likes.

use std::time::Duration;

use tokio::time::Instant;

/// The least average rate of an upload once its first idle timeout has
/// passed, in bytes per second: slow enough for a CI runner's uploads
/// sharing a thin link, fast enough that holding a connection costs a
/// trickling client real traffic.
pub const MIN_BODY_RATE: u64 = 16 * 1024;

/// An upload's progress against its deadlines.
#[derive(Debug, Clone, Copy)]
pub struct Pace {
    started: Instant,
    last_bytes: Instant,
    received: u64,
    idle: Duration,
}

impl Pace {
    pub fn new(idle: Duration) -> Pace {
        let now = Instant::now();
        Pace {
            started: now,
            last_bytes: now,
            received: 0,
            idle,
        }
    }

    /// Counts `bytes` more; no bytes, no progress.
    pub fn received(&mut self, bytes: u64) {
        if bytes > 0 {
            self.received = self.received.saturating_add(bytes);
            self.last_bytes = Instant::now();
        }
    }

    /// When the upload has paused too long or fallen below the rate.
    pub fn deadline(&self) -> Instant {
        let pause_ends = self.last_bytes + self.idle;
        let rate_ends =
            self.started + self.idle + Duration::from_secs(self.received / MIN_BODY_RATE);
        pause_ends.min(rate_ends)
    }

    /// Why an upload that missed [`Pace::deadline`] was abandoned.
    pub fn too_slow(&self) -> String {
        format!(
            "the upload came slower than {} KiB/s after the first {:?}, or paused longer; \
             it was abandoned",
            MIN_BODY_RATE / 1024,
            self.idle
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn only_bytes_move_the_deadline() {
        let idle = Duration::from_secs(10);
        let mut pace = Pace::new(idle);
        let start = Instant::now();
        assert_eq!(pace.deadline(), start + idle);
        tokio::time::advance(Duration::from_secs(3)).await;
        pace.received(0);
        assert_eq!(
            pace.deadline(),
            start + idle,
            "an empty message is no progress"
        );
        pace.received(1);
        // A byte resets the pause but not the rate: the first idle timeout
        // is all a trickle gets.
        assert_eq!(pace.deadline(), start + idle);
        pace.received(MIN_BODY_RATE * 20);
        assert_eq!(pace.deadline(), start + Duration::from_secs(13));
        tokio::time::advance(Duration::from_secs(10)).await;
        // 20 s of credit, but the pause since the last bytes has run out.
        assert_eq!(pace.deadline(), start + Duration::from_secs(13));
    }
}
