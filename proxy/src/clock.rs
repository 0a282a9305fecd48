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
