//! ACME (RFC 8555) issuance with instant-acme: one certificate for a list of names, validated
//! with HTTP-01 challenges that frontdoor's own HTTP listener answers from [`Challenges`].
//! The account credentials and the issued chain and key are kept on disk (key files 0600,
//! written to a temporary name and renamed, so a reader never sees half a file).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rustls::sign::CertifiedKey;

use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, ChallengeType, Identifier, NewAccount,
    NewOrder, OrderStatus, RetryPolicy,
};

/// What to issue and where to keep it.
#[derive(Debug, Clone)]
pub struct AcmeSettings {
    pub directory: String,
    pub contact: Vec<String>,
    pub hosts: Vec<String>,
    pub storage: PathBuf,
    /// Extra root (PEM file) for the CA's own HTTPS.
    pub ca_file: Option<PathBuf>,
    pub challenge: Challenge,
}

impl AcmeSettings {
    pub fn cert_path(&self) -> PathBuf {
        self.storage.join(format!("{}.crt", self.hosts[0]))
    }

    pub fn key_path(&self) -> PathBuf {
        self.storage.join(format!("{}.key", self.hosts[0]))
    }

    fn account_path(&self) -> PathBuf {
        self.storage.join("account.json")
    }
}

/// Which challenge proves control of the names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Challenge {
    /// A token served at `/.well-known/acme-challenge/` on port 80.
    #[default]
    Http01,
    /// A validation certificate offered on port 443 to ALPN `acme-tls/1` (RFC 8737).
    TlsAlpn01,
}

/// The ALPN protocol of TLS-ALPN-01 validation handshakes.
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

/// Challenge answers while an order is being validated: HTTP-01 tokens (token → key
/// authorization) and TLS-ALPN-01 certificates (name → certificate).
#[derive(Debug, Default)]
pub struct Challenges {
    http: RwLock<HashMap<String, String>>,
    alpn: RwLock<HashMap<String, Arc<CertifiedKey>>>,
}

impl Challenges {
    /// The key authorization for a token, if one is being validated.
    pub fn get(&self, token: &str) -> Option<String> {
        self.http
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(token)
            .cloned()
    }

    /// The TLS-ALPN-01 certificate for a name, if one is being validated.
    pub fn alpn_certificate(&self, name: &str) -> Option<Arc<CertifiedKey>> {
        self.alpn
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&name.to_ascii_lowercase())
            .cloned()
    }

    fn set(&self, token: &str, value: Option<String>) {
        let mut map = self.http.write().unwrap_or_else(|p| p.into_inner());
        match value {
            Some(v) => map.insert(token.to_string(), v),
            None => map.remove(token),
        };
    }

    fn set_alpn(&self, name: &str, value: Option<Arc<CertifiedKey>>) {
        let mut map = self.alpn.write().unwrap_or_else(|p| p.into_inner());
        let name = name.to_ascii_lowercase();
        match value {
            Some(v) => map.insert(name, v),
            None => map.remove(&name),
        };
    }
}

/// One challenge answer, as shared with the other members of a fleet (any of them may be the
/// one the CA validates against).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Published {
    Http01 {
        token: String,
        key_authorization: String,
    },
    /// The SHA-256 of the key authorization, hex.
    TlsAlpn01 { name: String, digest_hex: String },
}

impl Challenges {
    /// Serves an answer published by another member.
    pub fn apply(&self, p: &Published) -> Result<(), String> {
        match p {
            Published::Http01 {
                token,
                key_authorization,
            } => self.set(token, Some(key_authorization.clone())),
            Published::TlsAlpn01 { name, digest_hex } => {
                let digest = (0..digest_hex.len())
                    .step_by(2)
                    .map(|i| {
                        digest_hex
                            .get(i..i + 2)
                            .and_then(|h| u8::from_str_radix(h, 16).ok())
                    })
                    .collect::<Option<Vec<u8>>>()
                    .ok_or("bad digest")?;
                let cert = alpn_certificate(name, &digest)?;
                self.set_alpn(name, Some(Arc::new(cert)));
            }
        }
        Ok(())
    }

    /// Stops serving an answer.
    pub fn withdraw(&self, p: &Published) {
        match p {
            Published::Http01 { token, .. } => self.set(token, None),
            Published::TlsAlpn01 { name, .. } => self.set_alpn(name, None),
        }
    }
}

/// Where this member's challenge answers go besides its own [`Challenges`]: the fleet. `publish`
/// returns once every member can see the answer.
pub trait Publish: Send + Sync {
    fn publish<'a>(
        &'a self,
        p: &'a Published,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send + 'a>>;
}

/// The self-signed certificate for `name` carrying the acmeIdentifier extension with the
/// SHA-256 of the key authorization (RFC 8737 §3).
fn alpn_certificate(name: &str, key_authorization_sha256: &[u8]) -> Result<CertifiedKey, String> {
    let key = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
    let mut params =
        rcgen::CertificateParams::new(vec![name.to_string()]).map_err(|e| e.to_string())?;
    params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(
        key_authorization_sha256,
    )];
    let cert = params.self_signed(&key).map_err(|e| e.to_string())?;
    let der = rustls_pki_types::PrivateKeyDer::try_from(key.serialize_der())
        .map_err(|e| e.to_string())?;
    let signing = rustls::crypto::aws_lc_rs::default_provider()
        .key_provider
        .load_private_key(der)
        .map_err(|e| e.to_string())?;
    Ok(CertifiedKey::new(vec![cert.der().clone()], signing))
}

/// The path prefix HTTP-01 validation requests use.
pub const CHALLENGE_PREFIX: &str = "/.well-known/acme-challenge/";

/// The stored certificate's expiry (Unix seconds), when a readable, matching pair is on disk.
pub fn stored_not_after(settings: &AcmeSettings) -> Option<i64> {
    let cert = settings.cert_path();
    let key = settings.key_path();
    let certified = crate::load_certified_key(cert.to_str()?, key.to_str()?).ok()?;
    crate::not_after_unix(certified.cert.first()?.as_ref())
}

/// Issues a certificate for `settings.hosts` and stores it. Returns its expiry.
pub async fn issue(
    settings: &AcmeSettings,
    challenges: &Arc<Challenges>,
    publish: Option<&dyn Publish>,
) -> Result<(i64, String, String), String> {
    std::fs::create_dir_all(&settings.storage)
        .map_err(|e| format!("{}: {e}", settings.storage.display()))?;
    let account = account(settings).await?;
    let identifiers: Vec<Identifier> = settings
        .hosts
        .iter()
        .map(|h| Identifier::Dns(h.clone()))
        .collect();
    let mut order = account
        .new_order(&NewOrder::new(&identifiers))
        .await
        .map_err(|e| format!("new order: {e}"))?;

    // Publish every pending challenge's answer, then tell the CA to validate.
    let mut published: Vec<Published> = Vec::new();
    let result = async {
        let mut authorizations = order.authorizations();
        while let Some(authz) = authorizations.next().await {
            let mut authz = authz.map_err(|e| format!("authorization: {e}"))?;
            match authz.status {
                AuthorizationStatus::Valid => continue,
                AuthorizationStatus::Pending => {}
                other => return Err(format!("authorization is {other:?}")),
            }
            let kind = match settings.challenge {
                Challenge::Http01 => ChallengeType::Http01,
                Challenge::TlsAlpn01 => ChallengeType::TlsAlpn01,
            };
            let name = authz.identifier().to_string();
            let mut challenge = authz
                .challenge(kind.clone())
                .ok_or_else(|| format!("the CA offers no {kind:?} challenge"))?;
            let key_authorization = challenge.key_authorization();
            let answer = match settings.challenge {
                Challenge::Http01 => Published::Http01 {
                    token: challenge.token.clone(),
                    key_authorization: key_authorization.as_str().to_string(),
                },
                Challenge::TlsAlpn01 => Published::TlsAlpn01 {
                    name: name.clone(),
                    digest_hex: key_authorization
                        .digest()
                        .as_ref()
                        .iter()
                        .map(|b| format!("{b:02x}"))
                        .collect(),
                },
            };
            challenges.apply(&answer)?;
            if let Some(fleet) = publish {
                fleet.publish(&answer).await?;
            }
            published.push(answer);
            challenge
                .set_ready()
                .await
                .map_err(|e| format!("challenge ready: {e}"))?;
        }
        let retries = RetryPolicy::new()
            .initial_delay(Duration::from_millis(250))
            .timeout(Duration::from_secs(90));
        let status = order
            .poll_ready(&retries)
            .await
            .map_err(|e| format!("validation: {e}"))?;
        if status != OrderStatus::Ready {
            return Err(format!("order is {status:?} after validation"));
        }
        let key_pem = order
            .finalize()
            .await
            .map_err(|e| format!("finalize: {e}"))?;
        let chain_pem = order
            .poll_certificate(&retries)
            .await
            .map_err(|e| format!("certificate: {e}"))?;
        Ok((chain_pem, key_pem))
    }
    .await;
    for p in &published {
        challenges.withdraw(p);
    }
    let (chain_pem, key_pem) = result?;
    let not_after = install(settings, &chain_pem, &key_pem)?;
    Ok((not_after, chain_pem, key_pem))
}

/// Stores a chain and key (ours, or issued by another member of the fleet), checked to load
/// and match before it replaces anything. Returns its expiry.
pub fn install(settings: &AcmeSettings, chain_pem: &str, key_pem: &str) -> Result<i64, String> {
    std::fs::create_dir_all(&settings.storage)
        .map_err(|e| format!("{}: {e}", settings.storage.display()))?;
    let cert_new = settings.cert_path().with_extension("crt.new");
    let key_new = settings.key_path().with_extension("key.new");
    write_private(&key_new, key_pem.as_bytes())?;
    write_private(&cert_new, chain_pem.as_bytes())?;
    let check = crate::load_certified_key(&cert_new.to_string_lossy(), &key_new.to_string_lossy())
        .map_err(|e| format!("issued certificate unusable: {e}"))?;
    let not_after = check
        .cert
        .first()
        .and_then(|c| crate::not_after_unix(c.as_ref()))
        .ok_or("issued certificate has no readable expiry")?;
    rename(&key_new, &settings.key_path())?;
    rename(&cert_new, &settings.cert_path())?;
    Ok(not_after)
}

/// The stored account, or a new one (saved before use).
async fn account(settings: &AcmeSettings) -> Result<Account, String> {
    let builder = || {
        match &settings.ca_file {
            Some(root) => Account::builder_with_root(root),
            None => Account::builder(),
        }
        .map_err(|e| format!("ACME client: {e}"))
    };
    let path = settings.account_path();
    if let Ok(text) = std::fs::read(&path) {
        let credentials: AccountCredentials =
            serde_json::from_slice(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        return builder()?
            .from_credentials(credentials)
            .await
            .map_err(|e| format!("account: {e}"));
    }
    let contact: Vec<&str> = settings.contact.iter().map(String::as_str).collect();
    let (account, credentials) = builder()?
        .create(
            &NewAccount {
                contact: &contact,
                terms_of_service_agreed: true,
                only_return_existing: false,
            },
            settings.directory.clone(),
            None,
        )
        .await
        .map_err(|e| format!("new account at {}: {e}", settings.directory))?;
    let json = serde_json::to_vec(&credentials).map_err(|e| e.to_string())?;
    write_private(&path, &json)?;
    Ok(account)
}

/// Writes a file only its owner can read (0600 on Unix), through a temporary name and a
/// rename, so a reader never sees half of it.
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<(), String> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut f = options
        .open(&tmp)
        .map_err(|e| format!("{}: {e}", tmp.display()))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(|e| format!("{}: {e}", tmp.display()))?;
    rename(&tmp, path)
}

fn rename(from: &Path, to: &Path) -> Result<(), String> {
    std::fs::rename(from, to).map_err(|e| format!("{} → {}: {e}", from.display(), to.display()))
}
