//! `certs`: certificates for frontdoor's TLS listener.
//!
//! PEM chains and keys are loaded into a [`CertStore`] (exact names, `*.suffix` wildcards, a
//! default); a [`SniResolver`] serves the current store to rustls and swaps in a new one
//! atomically on reload, so handshakes in flight keep the store they started with. A new store
//! is only built when every file loads and every key matches its certificate; otherwise the old
//! one keeps serving. [`dev`] makes a local CA and leaf for the demo and tests; [`acme`] issues
//! and stores certificates from an ACME CA.

#![forbid(unsafe_code)]

pub mod acme;
pub mod dev;
mod store;
mod x509;

pub use x509::{dns_names, issuer_name, not_after_unix};

pub use store::{
    CertError, CertSource, CertStore, ServerTls, SniResolver, TlsProfile, load_certified_key,
    scan_directory,
};

/// Installs aws-lc-rs as the process-wide rustls provider. Safe to call more than once.
pub fn install_crypto_provider() {
    // Err means a provider is already installed, which is what we want either way.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}
