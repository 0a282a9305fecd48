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
    // A token being validated (ours, or a fleet member's) is answered; an unknown one is a
    // 404 where ACME is configured, and otherwise routed like any path.
    let (status, body) = match proxy.acme_challenges.get(token) {
        Some(key_authorization) => (StatusCode::OK, key_authorization),
        None => {
            proxy.active().snapshot.tls.acme.as_ref()?;
            (StatusCode::NOT_FOUND, String::new())
        }
    };
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain"),
    );
    Some(resp)
}

/// Up to a tenth of `d`, from the clock's low bits: spreads a fleet's retries and renewals.
fn jitter(d: Duration) -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |t| t.subsec_nanos());
    d / 10 * (nanos % 1000) / 1000
}

/// Applies (or, `value` None, withdraws) a challenge answer another member published under
/// `acme/challenge/<kind>/<id>`.
pub fn fleet_challenge(proxy: &Proxy, id: &str, value: Option<&[u8]>) {
    match value {
        Some(v) => match serde_json::from_slice::<certs::acme::Published>(v) {
            Ok(p) => {
                if let Err(e) = proxy.acme_challenges.apply(&p) {
                    tracing::warn!(error = %e, "fleet ACME challenge ignored");
                }
            }
            Err(e) => tracing::warn!(error = %e, "fleet ACME challenge unreadable"),
        },
        None => {
            let withdrawn = match id.split_once('/') {
                Some(("http01", token)) => certs::acme::Published::Http01 {
                    token: token.to_string(),
                    key_authorization: String::new(),
                },
                Some(("alpn", name)) => certs::acme::Published::TlsAlpn01 {
                    name: name.to_string(),
                    digest_hex: String::new(),
                },
                _ => return,
            };
            proxy.acme_challenges.withdraw(&withdrawn);
        }
    }
}

/// Puts this member's challenge answers in etcd (leased with the order's lock), where every
/// member's fleet watch applies them.
struct EtcdPublisher {
    client: etcd_client::Client,
    prefix: String,
    lease: i64,
}

impl certs::acme::Publish for EtcdPublisher {
    fn publish<'a>(
        &'a self,
        p: &'a certs::acme::Published,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send + 'a>> {
        Box::pin(async move {
            let id = match p {
                certs::acme::Published::Http01 { token, .. } => format!("http01/{token}"),
                certs::acme::Published::TlsAlpn01 { name, .. } => format!("alpn/{name}"),
            };
            let value = serde_json::to_vec(p).map_err(|e| e.to_string())?;
            let mut client = self.client.clone();
            client
                .put(
                    format!("{}acme/challenge/{id}", self.prefix),
                    value,
                    Some(etcd_client::PutOptions::new().with_lease(self.lease)),
                )
                .await
                .map_err(|e| format!("publishing the challenge: {e}"))?;
            // Watches deliver within milliseconds on a quiet network; leave a generous margin
            // before the CA is told to validate (orders are rare, a second is cheap).
            tokio::time::sleep(Duration::from_secs(1)).await;
            Ok(())
        })
    }
}

/// The fleet's certificate record.
#[derive(serde::Serialize, serde::Deserialize)]
struct FleetCert {
    chain: String,
    key: String,
    member: String,
}

/// Installs the fleet's certificate for the first host when it differs from the stored one.
async fn take_fleet_certificate(
    proxy: &Proxy,
    s: &certs::acme::AcmeSettings,
    mut client: etcd_client::Client,
    cert_key: String,
) -> Result<(), String> {
    let stored = std::fs::read_to_string(s.cert_path()).unwrap_or_default();
    let found = client
        .get(cert_key, None)
        .await
        .map_err(|e| e.to_string())?;
    if let Some(kv) = found.kvs().first()
        && let Ok(remote) = serde_json::from_slice::<FleetCert>(kv.value())
        && remote.chain != stored
    {
        let not_after = certs::acme::install(s, &remote.chain, &remote.key)?;
        tracing::info!(host = %s.hosts[0], from = %remote.member, not_after, "ACME certificate taken from the fleet");
        let _ = proxy.reload_tls();
    }
    Ok(())
}

/// One round in fleet mode: take the fleet's newer certificate if there is one; otherwise, when
/// renewal is due, issue under the fleet's lock (one member at a time per name) and share the
/// result. Returns how long to wait before the next round.
async fn fleet_round(
    proxy: &Proxy,
    acme: &routes::Acme,
    fleet: &crate::fleet::FleetOptions,
) -> Result<Duration, String> {
    let s = settings(acme);
    let e = |e: etcd_client::Error| e.to_string();
    let mut client = crate::fleet::connect(&fleet.endpoints).await?;
    let pre = crate::fleet::prefix(&fleet.name);
    let host = &s.hosts[0];
    let cert_key = format!("{pre}acme/cert/{host}");
    let lock_key = format!("{pre}acme/lock/{host}");
    // The fleet's certificate, when it differs from ours, then: is renewal due?
    let due = |client: etcd_client::Client| {
        let (s, cert_key) = (&s, cert_key.clone());
        async move {
            take_fleet_certificate(proxy, s, client, cert_key).await?;
            let stored = certs::acme::stored_not_after(s);
            // Re-check every minute: another member may renew first.
            Ok::<_, String>(renewal_wait(
                stored,
                acme.renew_before,
                crate::clock::unix_now() as i64,
                Duration::from_secs(60),
            ))
        }
    };
    if let Some(wait) = due(client.clone()).await? {
        return Ok(wait);
    }
    // Due: one member issues. The lock lives as long as its lease (the order's challenge
    // answers share it, so revoking the lease withdraws them everywhere).
    let lease = client.lease_grant(120, None).await.map_err(e)?.id();
    let txn = etcd_client::Txn::new()
        .when([etcd_client::Compare::create_revision(
            lock_key.clone(),
            etcd_client::CompareOp::Equal,
            0,
        )])
        .and_then([etcd_client::TxnOp::put(
            lock_key,
            fleet.member.clone(),
            Some(etcd_client::PutOptions::new().with_lease(lease)),
        )]);
    if !client.txn(txn).await.map_err(e)?.succeeded() {
        let _ = client.lease_revoke(lease).await;
        return Ok(Duration::from_secs(2)); // another member is issuing
    }
    // Checked again under the lock: a member that finished just before we took it has
    // already shared its certificate.
    match due(client.clone()).await {
        Ok(None) => {}
        other => {
            let _ = client.lease_revoke(lease).await;
            return other.map(|wait| wait.unwrap_or(Duration::ZERO));
        }
    }
    let publisher = EtcdPublisher {
        client: client.clone(),
        prefix: pre,
        lease,
    };
    let issued = certs::acme::issue(&s, &proxy.acme_challenges, Some(&publisher)).await;
    let outcome = match issued {
        Ok((not_after, chain, key)) => {
            let record = FleetCert {
                chain,
                key,
                member: fleet.member.clone(),
            };
            let value = serde_json::to_vec(&record).map_err(|x| x.to_string())?;
            client.put(cert_key, value, None).await.map_err(e)?;
            tracing::info!(host, not_after, "ACME certificate issued for the fleet");
            metrics::counter!(crate::telemetry::ACME_ISSUANCES, crate::telemetry::L_RESULT => "ok")
                .increment(1);
            let _ = proxy.reload_tls();
            Ok(Duration::ZERO)
        }
        Err(err) => Err(err),
    };
    let _ = client.lease_revoke(lease).await;
    outcome
}

/// One round alone: issue when renewal is due, else say how long until it is.
async fn local_round(proxy: &Proxy, acme: &routes::Acme) -> Result<Duration, String> {
    let s = settings(acme);
    let stored = certs::acme::stored_not_after(&s);
    if let Some(wait) = renewal_wait(
        stored,
        acme.renew_before,
        crate::clock::unix_now() as i64,
        Duration::from_secs(3600),
    ) {
        return Ok(wait);
    }
    let (not_after, _, _) = certs::acme::issue(&s, &proxy.acme_challenges, None).await?;
    tracing::info!(hosts = ?s.hosts, not_after, "ACME certificate issued");
    metrics::counter!(crate::telemetry::ACME_ISSUANCES, crate::telemetry::L_RESULT => "ok")
        .increment(1);
    let _ = proxy.reload_tls();
    Ok(Duration::ZERO)
}

/// `None` when a certificate expiring at `not_after` (none stored: `None`) is due for renewal
/// at `now`; otherwise how long to wait, at most `cap` (so config changes are picked up).
fn renewal_wait(
    not_after: Option<i64>,
    renew_before: Duration,
    now: i64,
    cap: Duration,
) -> Option<Duration> {
    let due_at = not_after? - renew_before.as_secs() as i64;
    (due_at > now).then(|| Duration::from_secs((due_at - now) as u64).min(cap))
}

/// Exponential backoff between failed rounds: 30 s doubling to 6 h.
#[derive(Debug)]
struct Backoff(Duration);

impl Backoff {
    const FIRST: Duration = Duration::from_secs(30);
    const MAX: Duration = Duration::from_secs(6 * 3600);

    /// The wait after a failure (with up to 10% jitter); the next one is twice as long.
    fn failed(&mut self) -> Duration {
        let wait = self.0 + jitter(self.0);
        self.0 = (self.0 * 2).min(Self::MAX);
        wait
    }

    fn reset(&mut self) {
        self.0 = Self::FIRST;
    }
}

/// Runs the issue/renew loop until shutdown (`fleet`: share the work through etcd).
pub fn spawn(
    proxy: Arc<Proxy>,
    mut stop: watch::Receiver<bool>,
    fleet: Option<crate::fleet::FleetOptions>,
) {
    tokio::spawn(async move {
        let mut backoff = Backoff(Backoff::FIRST);
        loop {
            let round = match (proxy.active().snapshot.tls.acme.clone(), &fleet) {
                (None, _) => Ok(Duration::from_secs(60)),
                (Some(acme), Some(f)) => fleet_round(&proxy, &acme, f).await,
                (Some(acme), None) => local_round(&proxy, &acme).await,
            };
            let wait = match round {
                Ok(wait) => {
                    backoff.reset();
                    wait
                }
                Err(e) => {
                    let wait = backoff.failed();
                    tracing::warn!(error = %e, retry_in_s = wait.as_secs(), "ACME round failed");
                    metrics::counter!(crate::telemetry::ACME_ISSUANCES, crate::telemetry::L_RESULT => "failed").increment(1);
                    wait
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_is_due_renew_before_expiry() {
        let day = 86_400;
        let before = Duration::from_secs(30 * day as u64);
        let cap = Duration::from_secs(3600);
        let now = 1_000_000_000;
        assert_eq!(
            renewal_wait(None, before, now, cap),
            None,
            "nothing stored: issue"
        );
        assert_eq!(
            renewal_wait(Some(now + 90 * day), before, now, cap),
            Some(cap)
        );
        assert_eq!(
            renewal_wait(Some(now + 30 * day + 120), before, now, cap),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            renewal_wait(Some(now + 30 * day), before, now, cap),
            None,
            "due now"
        );
        assert_eq!(
            renewal_wait(Some(now - day), before, now, cap),
            None,
            "expired"
        );
    }

    #[test]
    fn backoff_doubles_to_six_hours_with_bounded_jitter() {
        let mut b = Backoff(Backoff::FIRST);
        let mut base = Backoff::FIRST;
        for _ in 0..12 {
            let w = b.failed();
            assert!(w >= base && w <= base + base / 10, "{w:?} for {base:?}");
            base = (base * 2).min(Backoff::MAX);
        }
        assert_eq!(b.0, Backoff::MAX);
        b.reset();
        assert_eq!(b.0, Backoff::FIRST);
    }
}
