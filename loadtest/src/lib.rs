//! `loadtest`: frontdoor's load-test harness, and the library of in-process origins and clients
//! every crate's tests use (no fixed ports, no external origin processes).

#![forbid(unsafe_code)]

pub mod client;
pub mod origin;

pub use client::{Client, Collected};
pub use origin::{Echo, FaultSpec, Faults, Origin, OriginHandle};
