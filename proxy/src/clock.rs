//! The one clock: tokio's, so tests run with a paused clock and `advance()`.

use std::sync::OnceLock;

use tokio::time::Instant;

/// Milliseconds since the first call in this process, on tokio's clock.
pub fn now_ms() -> u64 {
    static BASE: OnceLock<Instant> = OnceLock::new();
    let base = *BASE.get_or_init(Instant::now);
    // Start at 1 so that 0 can mean "never" in atomics holding deadlines.
    Instant::now().duration_since(base).as_millis() as u64 + 1
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
