//! The one clock: tokio's, so tests run with a paused clock and `advance()`.

use std::sync::OnceLock;

use tokio::time::Instant;

/// Milliseconds since the first call in this process, on tokio's clock.
pub fn now_ms() -> u64 {
    ms_at(Instant::now())
}

/// [`now_ms`] at `at`, a time already read: a request reads the clock once for what it does
/// at one moment.
pub fn ms_at(at: Instant) -> u64 {
    static BASE: OnceLock<Instant> = OnceLock::new();
    let base = *BASE.get_or_init(|| at);
    // Start at 1 so that 0 can mean "never" in atomics holding deadlines.
    at.saturating_duration_since(base).as_millis() as u64 + 1
}

/// Unix time in seconds: the wall clock at the first call, advanced by tokio's clock since, so
/// cache ages follow a paused test clock too.
pub fn unix_now() -> u64 {
    static BASE: OnceLock<(Instant, u64)> = OnceLock::new();
    let (at, unix) = *BASE.get_or_init(|| {
        let unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        (Instant::now(), unix)
    });
    unix + Instant::now().duration_since(at).as_secs()
}

/// Days since 1970-01-01 → (year, month, day), proleptic Gregorian.
pub fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::civil_from_days;

    #[test]
    fn dates_from_unix_days() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
        assert_eq!(civil_from_days(19_723), (2024, 1, 1));
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
        assert_eq!(civil_from_days(20_784), (2026, 11, 27));
    }
}
