//! Resolving a retry policy as written (`defaults.retry`, a step's `retry`) into the
//! [`RetryPolicy`] a step runs with, and the problems of what was written.
//!
//! Invariant: a field left unset inherits (step ← defaults ← built-in), field by field.

use crate::workflow::raw::RawRetry;
use crate::workflow::retry::{MAX_DURATION_S, RetryPolicy};

impl RetryPolicy {
    /// This policy with every field that `overrides` sets replaced.
    pub fn overlaid(&self, overrides: &RawRetry) -> RetryPolicy {
        RetryPolicy {
            max_attempts: overrides.max_attempts.unwrap_or(self.max_attempts),
            initial_interval_ms: overrides
                .initial_interval_ms
                .unwrap_or(self.initial_interval_ms),
            backoff_factor: overrides.backoff_factor.unwrap_or(self.backoff_factor),
            max_interval_ms: overrides.max_interval_ms.unwrap_or(self.max_interval_ms),
            jitter: overrides.jitter.unwrap_or(self.jitter),
            non_retryable: overrides
                .non_retryable
                .clone()
                .unwrap_or_else(|| self.non_retryable.clone()),
        }
    }
}

/// Problems with a partial retry policy as written: `(field, message)` pairs, field names
/// relative to the `retry` object.
pub fn retry_problems(raw: &RawRetry) -> Vec<(&'static str, String)> {
    let mut problems = Vec::new();
    for (name, value) in [
        ("initial_interval_ms", raw.initial_interval_ms),
        ("max_interval_ms", raw.max_interval_ms),
    ] {
        if let Some(ms) = value
            && ms > MAX_DURATION_S * 1000
        {
            problems.push((
                name,
                format!(
                    "{ms} ms is more than the limit of {} ms (30 days)",
                    MAX_DURATION_S * 1000
                ),
            ));
        }
    }
    if raw.max_attempts == Some(0) {
        problems.push((
            "max_attempts",
            "must be at least 1 (1 means: never retry)".to_owned(),
        ));
    }
    if let Some(factor) = raw.backoff_factor
        && !(factor.is_finite() && factor >= 1.0)
    {
        problems.push((
            "backoff_factor",
            format!("must be a number >= 1, got {factor}"),
        ));
    }
    if raw
        .non_retryable
        .as_ref()
        .is_some_and(|ps| ps.iter().any(|p| p.trim().is_empty()))
    {
        problems.push((
            "non_retryable",
            "patterns must not be empty (an empty pattern matches every error)".to_owned(),
        ));
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_replace_only_the_fields_they_set() {
        let base = RetryPolicy::default();
        let merged = base.overlaid(&RawRetry {
            max_attempts: Some(5),
            jitter: Some(false),
            ..RawRetry::default()
        });
        assert_eq!(
            merged,
            RetryPolicy {
                max_attempts: 5,
                jitter: false,
                ..RetryPolicy::default()
            }
        );
        assert!(merged.allows_retry_after(4));
        assert!(!merged.allows_retry_after(5));
    }

    #[test]
    fn zero_attempts_and_shrinking_backoff_are_problems() {
        let raw = RawRetry {
            max_attempts: Some(0),
            backoff_factor: Some(0.5),
            non_retryable: Some(vec![" ".into()]),
            ..RawRetry::default()
        };
        let fields: Vec<&str> = retry_problems(&raw).into_iter().map(|(f, _)| f).collect();
        assert_eq!(fields, ["max_attempts", "backoff_factor", "non_retryable"]);
        assert!(
            retry_problems(&RawRetry {
                backoff_factor: Some(1.0),
                ..RawRetry::default()
            })
            .is_empty()
        );
    }
}
