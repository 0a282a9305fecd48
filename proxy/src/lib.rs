//! frontdoor: the edge reverse proxy and traffic router.
//!
//! Modules follow the request path: [`listen`] → [`classify`] → route (in the `routes` crate) →
//! [`forward`] → [`respond`] → record ([`telemetry`]), tied together in [`pipeline`]. [`state`]
//! holds the one swappable snapshot; [`admin`] is the operator API; [`server`] starts it all.

#![forbid(unsafe_code)]

pub mod acme;
pub mod admin;
pub mod cache;
pub mod classify;
pub mod clock;
pub mod demo;
pub mod fleet;
pub mod forward;
pub mod geoip;
pub mod head_timer;
pub mod limit;
pub mod listen;
pub mod pipeline;
pub mod respond;
pub mod rollout;
pub mod server;
pub mod state;
pub mod telemetry;
