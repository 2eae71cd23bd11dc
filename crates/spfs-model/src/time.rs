//! Modification times: nanoseconds since the Unix epoch in an `i64`.
//!
//! That covers the years 1677 to 2262; times outside saturate to the nearest
//! end. This module converts them from `stat` fields and to
//! [`SystemTime`], and shows them as RFC 3339 text in UTC with nanoseconds
//! (`2024-05-01T12:00:00.000000000Z`), the form every command prints.

use std::time::{Duration, SystemTime};

const NANOS_PER_SEC: i64 = 1_000_000_000;

/// Nanoseconds since the epoch from seconds and nanoseconds (as `stat`
/// gives them), saturating outside the range of an `i64`.
pub fn from_unix(secs: i64, nanos: i64) -> i64 {
    secs.saturating_mul(NANOS_PER_SEC).saturating_add(nanos)
}

/// The [`SystemTime`] of a time in nanoseconds since the epoch.
pub fn to_system_time(nanos: i64) -> SystemTime {
    let magnitude = Duration::from_nanos(nanos.unsigned_abs());
    if nanos >= 0 {
        SystemTime::UNIX_EPOCH + magnitude
    } else {
        // Every platform we target represents times before the epoch; if
        // one did not, the epoch is the nearest time it can show.
        SystemTime::UNIX_EPOCH
            .checked_sub(magnitude)
            .unwrap_or(SystemTime::UNIX_EPOCH)
    }
}

/// A time as RFC 3339 text in UTC with nine fractional digits.
pub fn rfc3339(nanos: i64) -> String {
    let frac = nanos.rem_euclid(NANOS_PER_SEC);
    format!("{}.{frac:09}Z", date_time(nanos.div_euclid(NANOS_PER_SEC)))
}

/// Seconds since the epoch as RFC 3339 text in UTC, whole seconds
/// (`2024-05-01T12:00:00Z`).
pub fn rfc3339_seconds(secs: i64) -> String {
    format!("{}Z", date_time(secs))
}

/// `YYYY-MM-DDTHH:MM:SS` of seconds since the epoch, in UTC.
fn date_time(secs: i64) -> String {
    let (year, month, day) = civil_from_days(secs.div_euclid(86_400));
    let of_day = secs.rem_euclid(86_400);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}",
        of_day / 3600,
        of_day / 60 % 60,
        of_day % 60
    )
}

/// The proleptic Gregorian date of a day number (days since 1970-01-01);
/// Howard Hinnant's `civil_from_days`.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_texts() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000000000Z");
        assert_eq!(
            rfc3339(from_unix(1_700_000_000, 123_456_789)),
            "2023-11-14T22:13:20.123456789Z"
        );
        assert_eq!(
            rfc3339(from_unix(951_782_400, 0)),
            "2000-02-29T00:00:00.000000000Z"
        );
        assert_eq!(rfc3339(-1), "1969-12-31T23:59:59.999999999Z");
        assert_eq!(rfc3339(i64::MAX), "2262-04-11T23:47:16.854775807Z");
        assert_eq!(rfc3339(i64::MIN), "1677-09-21T00:12:43.145224192Z");
    }

    #[test]
    fn conversions_saturate_and_round_trip() {
        assert_eq!(from_unix(i64::MAX, 0), i64::MAX);
        assert_eq!(from_unix(i64::MIN, -1), i64::MIN);
        let t = from_unix(1_700_000_000, 5);
        assert_eq!(
            to_system_time(t)
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap(),
            Duration::new(1_700_000_000, 5)
        );
        assert_eq!(
            SystemTime::UNIX_EPOCH
                .duration_since(to_system_time(-1_500_000_000))
                .unwrap(),
            Duration::new(1, 500_000_000)
        );
    }
}
