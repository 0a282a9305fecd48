//! frontdoor: the edge reverse proxy and traffic router.
//!
//! Modules follow the request path: [`listen`] → [`classify`] → route (in the `routes` crate) →
//! [`forward`] → [`respond`] → record ([`telemetry`]), tied together in [`pipeline`]. [`state`]
//! holds the one swappable snapshot; [`admin`] is the operator API; [`server`] starts it all.

#![forbid(unsafe_code)]

/// `Box::pin(future)`, with the box allocated before the future is built. A future's size is
/// that of its largest state, and `Box::pin` copies all of it from the stack, used or not;
/// built after the allocation, the compiler writes the future's first state straight into the
/// box. On the request path this saved the copies of two futures of 3 and 1.5 KiB per request
/// (benches/README.md).
macro_rules! pin_boxed {
    ($future:expr) => {{
        let slot = Box::new_uninit();
        Box::into_pin(Box::write(slot, $future))
    }};
}

pub mod acme;
pub mod admin;
pub mod cache;
pub mod classify;
pub mod clock;
pub mod demo;
pub mod fleet;
pub mod forward;
#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
pub mod fuzzing;
pub mod geoip;
pub mod head_timer;
pub mod limit;
pub mod listen;
pub mod pipeline;
pub mod respond;
pub mod rollout;
pub mod server;
pub mod spare;
pub mod state;
pub mod telemetry;
