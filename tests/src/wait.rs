//! The one polling loop tests use: bounded in time and in iterations.

use std::time::{Duration, Instant};

/// Polls `cond` every `interval` until it returns true or `timeout` passes.
/// Returns whether it became true. Runs at most `timeout / interval + 1`
/// times, so a slow `cond` cannot stretch the loop indefinitely beyond that.
pub fn wait_until(timeout: Duration, interval: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let interval = interval.max(Duration::from_millis(1));
    let max_rounds = (timeout.as_nanos() / interval.as_nanos()).min(1_000_000) as u64 + 1;
    let deadline = Instant::now() + timeout;
    for round in 0..max_rounds {
        if cond() {
            return true;
        }
        if round + 1 == max_rounds || Instant::now() >= deadline {
            break;
        }
        std::thread::sleep(interval.min(deadline.saturating_duration_since(Instant::now())));
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn true_at_once() {
        assert!(wait_until(
            Duration::from_secs(1),
            Duration::from_millis(10),
            || true
        ));
    }

    #[test]
    fn false_is_bounded() {
        let mut calls = 0;
        let start = Instant::now();
        let ok = wait_until(Duration::from_millis(50), Duration::from_millis(10), || {
            calls += 1;
            false
        });
        assert!(!ok);
        assert!(calls <= 6, "{calls} calls");
        assert!(start.elapsed() < Duration::from_secs(1));
    }

    #[test]
    fn becomes_true() {
        let mut n = 0;
        assert!(wait_until(
            Duration::from_secs(1),
            Duration::from_millis(1),
            || {
                n += 1;
                n == 3
            }
        ));
    }
}
