//! Retry policy: how many attempts a step gets, how long to wait between them, and which
//! errors are not worth retrying.
//!
//! Invariant: the policy is pure arithmetic over its fields and the caller's inputs (attempt
//! number, a random number, an error text); it never reads a clock or a random source, so
//! the engine's behaviour is reproducible in tests. A resolved policy always has
//! `max_attempts >= 1` and `backoff_factor >= 1` (enforced by validation).

use serde::{Deserialize, Serialize};

/// Resolved retry policy of one step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RetryPolicy {
    /// Total attempts including the first (1 = never retry).
    pub max_attempts: u32,
    /// Delay before the first retry.
    pub initial_interval_ms: u64,
    /// Each further retry waits this many times longer than the previous one.
    pub backoff_factor: f64,
    /// Upper bound on any single delay (before jitter).
    pub max_interval_ms: u64,
    /// Spread retries over [50%, 100%] of the computed delay ("equal jitter") so that many
    /// steps failing together do not retry in lockstep.
    pub jitter: bool,
    /// Error-text patterns (case-insensitive substrings) that make a failure final.
    pub non_retryable: Vec<String>,
}

impl Default for RetryPolicy {
    /// Claude Studio's policy: 3 attempts, 1 s doubling up to 30 s, jittered, and no retry
    /// for validation/configuration/authorisation errors.
    fn default() -> Self {
        Self {
            max_attempts: 3,
            initial_interval_ms: 1000,
            backoff_factor: 2.0,
            max_interval_ms: 30_000,
            jitter: true,
            non_retryable: [
                "validation failed",
                "invalid configuration",
                "unauthorized",
                "forbidden",
            ]
            .map(String::from)
            .to_vec(),
        }
    }
}

impl RetryPolicy {
    /// Delay before attempt `next_attempt` (2 = first retry): `initial * factor^(next_attempt-2)`,
    /// capped at `max_interval_ms`; with jitter, scaled by `jitter_unit` (in [0,1), clamped)
    /// into [50%, 100%] of that value. Attempt 1 (or 0) has no delay.
    pub fn delay_ms(&self, next_attempt: u32, jitter_unit: f64) -> u64 {
        if next_attempt < 2 {
            return 0;
        }
        let exponent = i32::try_from(next_attempt - 2).unwrap_or(i32::MAX);
        let cap = self.max_interval_ms as f64;
        let raw = self.initial_interval_ms as f64 * self.backoff_factor.powi(exponent);
        let capped = if raw.is_finite() { raw.min(cap) } else { cap };
        let delay = if self.jitter {
            let unit = if jitter_unit.is_nan() {
                0.0
            } else {
                jitter_unit.clamp(0.0, 1.0)
            };
            capped * (0.5 + 0.5 * unit)
        } else {
            capped
        };
        // `as` saturates and maps NaN to 0; `delay` is within [0, max_interval_ms] here.
        delay.floor() as u64
    }

    /// True when `error_text` contains any non-empty `non_retryable` pattern, ignoring case.
    pub fn is_non_retryable(&self, error_text: &str) -> bool {
        let haystack = error_text.to_lowercase();
        self.non_retryable
            .iter()
            .any(|p| !p.is_empty() && haystack.contains(&p.to_lowercase()))
    }

    /// True when attempt `attempt` (1-based) is allowed another try after failing.
    pub fn allows_retry_after(&self, attempt: u32) -> bool {
        attempt < self.max_attempts
    }
}

/// The longest duration a definition may ask for (timeouts, stall timeouts, retry
/// intervals): 30 days. Far from any overflow of `Instant` or of millisecond arithmetic in
/// `u64`/`i64`, so the engine never has to guard its time sums.
pub const MAX_DURATION_S: u64 = 30 * 24 * 3600;

#[cfg(test)]
mod tests {
    use super::*;

    fn no_jitter() -> RetryPolicy {
        RetryPolicy {
            jitter: false,
            ..RetryPolicy::default()
        }
    }

    #[test]
    fn defaults_match_the_original_system() {
        let p = RetryPolicy::default();
        assert_eq!(
            (p.max_attempts, p.initial_interval_ms, p.max_interval_ms),
            (3, 1000, 30_000)
        );
        assert_eq!(p.backoff_factor, 2.0);
        assert!(p.jitter);
        assert_eq!(
            p.non_retryable,
            [
                "validation failed",
                "invalid configuration",
                "unauthorized",
                "forbidden"
            ]
        );
    }

    #[test]
    fn delay_grows_geometrically_and_is_capped() {
        let p = no_jitter();
        let delays: Vec<u64> = (1..=9).map(|n| p.delay_ms(n, 0.0)).collect();
        assert_eq!(
            delays,
            [0, 1000, 2000, 4000, 8000, 16_000, 30_000, 30_000, 30_000]
        );
        assert_eq!(p.delay_ms(0, 0.0), 0);
        assert_eq!(
            p.delay_ms(u32::MAX, 0.0),
            30_000,
            "huge exponents saturate at the cap"
        );
        let flat = RetryPolicy {
            backoff_factor: 1.0,
            ..no_jitter()
        };
        assert_eq!(flat.delay_ms(7, 0.0), 1000);
        let low_cap = RetryPolicy {
            max_interval_ms: 500,
            ..no_jitter()
        };
        assert_eq!(
            low_cap.delay_ms(2, 0.0),
            500,
            "the cap applies even below the initial interval"
        );
    }

    #[test]
    fn jitter_stays_within_half_to_full_delay() {
        let p = RetryPolicy::default();
        for attempt in 2..=10 {
            let full = no_jitter().delay_ms(attempt, 0.0);
            for i in 0..100 {
                let unit = f64::from(i) / 100.0;
                let d = p.delay_ms(attempt, unit);
                assert!(
                    d >= full / 2 && d <= full,
                    "attempt {attempt} unit {unit}: {d} not in [{}, {full}]",
                    full / 2
                );
            }
            assert_eq!(p.delay_ms(attempt, 0.0), full / 2);
            assert!(p.delay_ms(attempt, 0.999_999) <= full);
        }
        assert_eq!(p.delay_ms(2, 0.5), 750);
        assert_eq!(p.delay_ms(2, -3.0), 500, "out-of-range units are clamped");
        assert_eq!(p.delay_ms(2, 7.0), 1000);
        assert_eq!(p.delay_ms(2, f64::NAN), 500);
    }

    #[test]
    fn non_retryable_matches_substrings_ignoring_case() {
        let p = RetryPolicy::default();
        assert!(p.is_non_retryable("HTTP 403 Forbidden"));
        assert!(p.is_non_retryable("error: Validation Failed for field x"));
        assert!(!p.is_non_retryable("connection reset by peer"));
        let custom = RetryPolicy {
            non_retryable: vec!["".into(), "Quota".into()],
            ..p
        };
        assert!(custom.is_non_retryable("quota exceeded"));
        assert!(
            !custom.is_non_retryable("timeout"),
            "an empty pattern matches nothing"
        );
    }
}
