//! Timestamps: milliseconds since the Unix epoch inside, RFC 3339 UTC outside.
//!
//! Invariant: every rendered timestamp has the same width (milliseconds always, `Z`), so
//! timestamps sort as text and columns line up.

/// Milliseconds since the Unix epoch, the store's clock unit.
pub fn now_ms() -> i64 {
    jiff::Timestamp::now().as_millisecond()
}

/// RFC 3339 UTC rendering of a store timestamp, with exactly three fractional digits.
pub fn rfc3339(ms: i64) -> String {
    jiff::Timestamp::from_millisecond(ms)
        .map(|t| t.strftime("%Y-%m-%dT%H:%M:%S%.3fZ").to_string())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::rfc3339;

    #[test]
    fn timestamps_have_one_width() {
        assert_eq!(rfc3339(1_700_000_000_000), "2023-11-14T22:13:20.000Z");
        assert_eq!(rfc3339(1_700_000_000_200), "2023-11-14T22:13:20.200Z");
        assert_eq!(rfc3339(1_700_000_000_228), "2023-11-14T22:13:20.228Z");
        let (a, b) = (rfc3339(1_700_000_000_200), rfc3339(1_700_000_000_030));
        assert!(b < a, "text order follows time order");
    }
}
