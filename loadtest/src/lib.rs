//! `loadtest`: frontdoor's load-test harness, and the library of in-process origins and clients
//! every crate's tests use (no fixed ports, no external origin processes).
//!
//! - [`origin`], [`client`]: test origins and clients.
//! - [`scenario`], [`engine`], [`report`], [`drill`]: the harness behind the `loadtest` binary.

#![forbid(unsafe_code)]

pub mod client;
pub mod drill;
pub mod engine;
pub mod origin;
pub mod report;
pub mod scenario;
pub mod tls;
pub mod wire;

pub use client::{Client, Collected};
pub use origin::{Echo, FaultSpec, Faults, Origin, OriginHandle};
