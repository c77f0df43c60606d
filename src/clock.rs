//! Wall-clock time as the log and the API write it: Unix milliseconds, and
//! RFC 3339 text for people.

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// `ms` (Unix milliseconds) as RFC 3339 text in UTC; empty if out of range.
pub fn rfc3339(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

/// RFC 3339 text (any offset), or a date (`2027-01-31`, its first moment in
/// UTC), as Unix milliseconds.
pub fn parse_time(text: &str) -> Option<i64> {
    parse_rfc3339(text).or_else(|| {
        let date = time::Date::parse(
            text.trim(),
            &time::macros::format_description!("[year]-[month]-[day]"),
        )
        .ok()?;
        let t = date.midnight().assume_utc();
        i64::try_from(t.unix_timestamp_nanos() / 1_000_000).ok()
    })
}

/// RFC 3339 text (any offset) as Unix milliseconds.
pub fn parse_rfc3339(text: &str) -> Option<i64> {
    let t =
        time::OffsetDateTime::parse(text.trim(), &time::format_description::well_known::Rfc3339)
            .ok()?;
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000).ok()
}

#[cfg(test)]
mod tests {
    #[test]
    fn rfc3339_text_parses_back_to_milliseconds() {
        assert_eq!(
            super::parse_rfc3339("2024-11-30T20:53:20.123Z"),
            Some(1_733_000_000_123)
        );
        assert_eq!(
            super::parse_rfc3339("2024-12-01T04:53:20+08:00"),
            Some(1_733_000_000_000)
        );
        assert_eq!(super::parse_rfc3339("tomorrow"), None);
        assert_eq!(
            super::parse_time("2024-11-30"),
            Some(1_732_924_800_000),
            "a date is its first moment in UTC"
        );
        assert_eq!(
            super::parse_time("2024-11-30T20:53:20.123Z"),
            Some(1_733_000_000_123)
        );
        assert_eq!(super::parse_time("30/11/2024"), None);
    }

    #[test]
    fn rfc3339_is_utc_with_milliseconds_dropped_when_zero() {
        assert_eq!(super::rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(
            super::rfc3339(1_733_000_000_123),
            "2024-11-30T20:53:20.123Z"
        );
    }
}
