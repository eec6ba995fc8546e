//! The retry policy of a step: how many attempts, and the delay before each,
//! growing by a factor up to a maximum, with jitter. Pure: the caller supplies
//! the random number, so the schedule is tested without clocks.

use std::time::Duration;

use crate::flow::RetrySpec;

#[derive(Clone, Debug, PartialEq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included.
    pub max_attempts: u32,
    pub initial_delay: Duration,
    pub factor: f64,
    pub max_delay: Duration,
    /// Fraction: a delay is multiplied by a number in [1 - jitter, 1 + jitter].
    pub jitter: f64,
}

impl RetryPolicy {
    /// This policy with the keys a flow file sets for one step.
    pub fn with_overrides(&self, spec: &RetrySpec) -> RetryPolicy {
        RetryPolicy {
            max_attempts: spec.max_attempts.unwrap_or(self.max_attempts),
            initial_delay: spec
                .initial_delay_ms
                .map_or(self.initial_delay, Duration::from_millis),
            factor: spec.factor.unwrap_or(self.factor),
            max_delay: spec
                .max_delay_ms
                .map_or(self.max_delay, Duration::from_millis),
            jitter: spec.jitter.unwrap_or(self.jitter),
        }
    }

    /// The delay after the `failed`-th failed attempt (1-based), given a
    /// uniform random `unit` in [0, 1).
    pub fn delay(&self, failed: u32, unit: f64) -> Duration {
        let exponent = failed.saturating_sub(1).min(64) as i32;
        let base = (self.initial_delay.as_secs_f64() * self.factor.powi(exponent))
            .min(self.max_delay.as_secs_f64());
        let spread = 1.0 + self.jitter * (2.0 * unit - 1.0);
        Duration::from_secs_f64((base * spread).max(0.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 5,
            initial_delay: Duration::from_millis(100),
            factor: 2.0,
            max_delay: Duration::from_millis(500),
            jitter: 0.0,
        }
    }

    #[test]
    fn delays_grow_by_the_factor_up_to_the_maximum() {
        let p = policy();
        let delays: Vec<u128> = (1..=5).map(|n| p.delay(n, 0.5).as_millis()).collect();
        assert_eq!(delays, [100, 200, 400, 500, 500]);
    }

    #[test]
    fn jitter_stays_within_its_bounds() {
        let p = RetryPolicy {
            jitter: 0.2,
            ..policy()
        };
        assert_eq!(p.delay(2, 0.0).as_millis(), 160);
        assert_eq!(p.delay(2, 0.5).as_millis(), 200);
        assert_eq!(p.delay(2, 0.999_999).as_millis(), 239);
    }

    #[test]
    fn a_step_overrides_only_what_it_sets() {
        let spec = RetrySpec {
            max_attempts: Some(1),
            factor: Some(3.0),
            ..RetrySpec::default()
        };
        let p = policy().with_overrides(&spec);
        assert_eq!(p.max_attempts, 1);
        assert_eq!(p.factor, 3.0);
        assert_eq!(p.initial_delay, Duration::from_millis(100));
    }
}
