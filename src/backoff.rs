//! The one backoff policy: exponential delays with full jitter, bounded, resettable.
//!
//! Every retry loop in the agent (informer list/watch, sink sends, lease calls) takes its
//! delays from a [`Backoff`] built from a named [`BackoffPolicy`], so "how long do we wait
//! after a failure" has one owner and one set of tests. A caller that was told how long to
//! wait (`Retry-After`) passes that as a floor with [`Backoff::next_delay_at_least`].

use std::time::Duration;

use rand::Rng;
use tokio_util::sync::CancellationToken;

/// Bounds of an exponential backoff.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackoffPolicy {
    /// The first delay (before jitter).
    pub min_delay: Duration,
    /// Delays never grow beyond this.
    pub max_delay: Duration,
    /// Each failure multiplies the delay by this factor.
    pub factor: u32,
    /// Spread each delay uniformly over `[delay/2, delay]` so that many clients that failed
    /// together do not retry together.
    pub jitter: bool,
}

impl BackoffPolicy {
    /// Informer list and watch failures (connection refused, 5xx, a broken stream).
    pub const INFORMER: BackoffPolicy =
        BackoffPolicy::new(Duration::from_millis(200), Duration::from_secs(30));
    /// Failures that retrying soon will not fix (401/403: RBAC or a rotated token): slow, so a
    /// misconfigured agent does not hammer the API server, but never giving up.
    pub const FORBIDDEN: BackoffPolicy =
        BackoffPolicy::new(Duration::from_secs(5), Duration::from_secs(120));
    /// Retriable sink failures (receiver down, 5xx, broker unreachable).
    pub const SINK: BackoffPolicy =
        BackoffPolicy::new(Duration::from_millis(100), Duration::from_secs(30));
    /// Lease get/create/replace failures; the renew deadline bounds the whole attempt.
    pub const LEASE: BackoffPolicy =
        BackoffPolicy::new(Duration::from_millis(100), Duration::from_secs(2));

    /// A jittered, doubling policy between `min_delay` and `max_delay`.
    pub const fn new(min_delay: Duration, max_delay: Duration) -> Self {
        Self {
            min_delay,
            max_delay,
            factor: 2,
            jitter: true,
        }
    }

    /// The same policy without jitter (deterministic delays, for tests).
    pub const fn without_jitter(mut self) -> Self {
        self.jitter = false;
        self
    }

    /// A fresh backoff following this policy.
    pub fn start(self) -> Backoff {
        Backoff {
            policy: self,
            current: self.min_delay,
            failures: 0,
        }
    }
}

/// The state of one retry loop: how many failures in a row, and the next delay.
#[derive(Debug, Clone)]
pub struct Backoff {
    policy: BackoffPolicy,
    /// The delay (before jitter) the next failure waits.
    current: Duration,
    /// Failures since the last [`Backoff::reset`].
    failures: u32,
}

impl Backoff {
    /// The delay to wait after one more failure.
    pub fn next_delay(&mut self) -> Duration {
        let base = self.current.min(self.policy.max_delay);
        self.failures = self.failures.saturating_add(1);
        self.current = base
            .saturating_mul(self.policy.factor.max(1))
            .min(self.policy.max_delay);
        if self.policy.jitter && !base.is_zero() {
            let half = base / 2;
            let spread = base - half;
            half + spread.mul_f64(rand::rng().random::<f64>())
        } else {
            base
        }
    }

    /// As [`Backoff::next_delay`], but never shorter than `floor` (a delay the other side
    /// asked for, e.g. `Retry-After`). The floor is honoured even above `max_delay`.
    pub fn next_delay_at_least(&mut self, floor: Option<Duration>) -> Duration {
        let delay = self.next_delay();
        match floor {
            Some(f) => delay.max(f),
            None => delay,
        }
    }

    /// Failures in a row since the last success.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// A success: the next failure starts again from the policy's first delay.
    pub fn reset(&mut self) {
        self.current = self.policy.min_delay;
        self.failures = 0;
    }

    /// Sleeps for the next delay (at least `floor`); false when `cancel` fired first.
    pub async fn wait(&mut self, floor: Option<Duration>, cancel: &CancellationToken) -> bool {
        let delay = self.next_delay_at_least(floor);
        tokio::select! {
            _ = cancel.cancelled() => false,
            _ = tokio::time::sleep(delay) => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: fn(u64) -> Duration = Duration::from_millis;

    #[test]
    fn delays_double_up_to_the_maximum_and_reset_after_success() {
        let mut b = BackoffPolicy::new(MS(100), MS(700))
            .without_jitter()
            .start();
        let delays: Vec<_> = (0..5).map(|_| b.next_delay()).collect();
        assert_eq!(delays, [MS(100), MS(200), MS(400), MS(700), MS(700)]);
        assert_eq!(b.failures(), 5);
        b.reset();
        assert_eq!(b.failures(), 0);
        assert_eq!(b.next_delay(), MS(100));
    }

    #[test]
    fn jitter_stays_between_half_and_the_full_delay() {
        let mut b = BackoffPolicy::new(MS(1000), MS(1000)).start();
        for _ in 0..200 {
            let d = b.next_delay();
            assert!(d >= MS(500) && d <= MS(1000), "{d:?}");
        }
    }

    #[test]
    fn a_delay_the_server_asked_for_is_a_floor_even_above_the_maximum() {
        let mut b = BackoffPolicy::new(MS(100), MS(200))
            .without_jitter()
            .start();
        assert_eq!(
            b.next_delay_at_least(Some(Duration::from_secs(5))),
            Duration::from_secs(5)
        );
        assert_eq!(b.next_delay_at_least(Some(MS(1))), MS(200));
        assert_eq!(b.next_delay_at_least(None), MS(200));
    }

    #[tokio::test(start_paused = true)]
    async fn wait_sleeps_the_delay_and_stops_early_when_cancelled() {
        let cancel = CancellationToken::new();
        let mut b = BackoffPolicy::new(Duration::from_secs(10), Duration::from_secs(10))
            .without_jitter()
            .start();
        let start = tokio::time::Instant::now();
        assert!(b.wait(None, &cancel).await);
        assert_eq!(start.elapsed(), Duration::from_secs(10));
        let c = cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            c.cancel();
        });
        let start = tokio::time::Instant::now();
        assert!(!b.wait(None, &cancel).await, "cancelled");
        assert_eq!(start.elapsed(), Duration::from_secs(1));
    }
}
