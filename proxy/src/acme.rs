//! Automatic certificates: keeps the `[tls.acme]` certificate issued and renewed, and answers
//! the CA's HTTP-01 validation requests on the plain HTTP listener.
//!
//! The loop: if no usable certificate is stored, or it expires within `renew_before`, issue
//! one (certs::acme), store it, and swap it into the TLS resolver; on failure retry with
//! exponential backoff (30 s doubling to 6 h) plus jitter; otherwise sleep until renewal is
//! due (checking at least hourly, so a reload that changes `[tls.acme]` is picked up).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::Full;
use tokio::sync::watch;

use crate::state::Proxy;

/// The settings the certs crate needs, from the validated config.
pub fn settings(acme: &routes::Acme) -> certs::acme::AcmeSettings {
    certs::acme::AcmeSettings {
        directory: acme.directory.clone(),
        contact: acme.contact.clone(),
        hosts: acme.hosts.clone(),
        storage: acme.storage.clone().into(),
        ca_file: acme.ca_file.clone().map(Into::into),
        challenge: if acme.tls_alpn {
            certs::acme::Challenge::TlsAlpn01
        } else {
            certs::acme::Challenge::Http01
        },
    }
}

/// The answer to `GET /.well-known/acme-challenge/TOKEN` while ACME is configured.
pub fn challenge_response(proxy: &Proxy, path: &str) -> Option<Response<Full<Bytes>>> {
    let token = path.strip_prefix(certs::acme::CHALLENGE_PREFIX)?;
    proxy.active().snapshot.tls.acme.as_ref()?;
    let (status, body) = match proxy.acme_challenges.get(token) {
        Some(key_authorization) => (StatusCode::OK, key_authorization),
        None => (StatusCode::NOT_FOUND, String::new()),
    };
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain"),
    );
    Some(resp)
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Up to a tenth of `d`, from the clock's low bits: spreads a fleet's retries and renewals.
fn jitter(d: Duration) -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |t| t.subsec_nanos());
    d / 10 * (nanos % 1000) / 1000
}

/// Runs the issue/renew loop until shutdown.
pub fn spawn(proxy: Arc<Proxy>, mut stop: watch::Receiver<bool>) {
    tokio::spawn(async move {
        let mut backoff = Duration::from_secs(30);
        loop {
            let wait = match proxy.active().snapshot.tls.acme.clone() {
                None => Duration::from_secs(60),
                Some(acme) => {
                    let s = settings(&acme);
                    let renew_at = certs::acme::stored_not_after(&s)
                        .map(|not_after| not_after - acme.renew_before.as_secs() as i64);
                    match renew_at {
                        Some(at) if at > unix_now() => {
                            backoff = Duration::from_secs(30);
                            Duration::from_secs((at - unix_now()) as u64)
                                .min(Duration::from_secs(3600))
                        }
                        _ => match certs::acme::issue(&s, &proxy.acme_challenges).await {
                            Ok(not_after) => {
                                tracing::info!(hosts = ?s.hosts, not_after, "ACME certificate issued");
                                metrics::counter!(crate::telemetry::ACME_ISSUANCES, crate::telemetry::L_RESULT => "ok").increment(1);
                                let _ = proxy.reload_tls();
                                backoff = Duration::from_secs(30);
                                Duration::ZERO
                            }
                            Err(e) => {
                                tracing::warn!(hosts = ?s.hosts, error = %e, retry_in_s = backoff.as_secs(), "ACME issuance failed");
                                metrics::counter!(crate::telemetry::ACME_ISSUANCES, crate::telemetry::L_RESULT => "failed").increment(1);
                                let w = backoff + jitter(backoff);
                                backoff = (backoff * 2).min(Duration::from_secs(6 * 3600));
                                w
                            }
                        },
                    }
                }
            };
            if wait.is_zero() {
                continue;
            }
            tokio::select! {
                _ = tokio::time::sleep(wait + jitter(wait)) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
        }
    });
}
