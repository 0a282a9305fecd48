//! Development certificates: a local CA and leaves it signs, so `curl --cacert ca.pem` works
//! without `-k`. Used by `frontdoor demo` and by tests. Never for production.

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// A certificate authority that lives in memory.
pub struct DevCa {
    issuer: Issuer<'static, KeyPair>,
    /// The CA certificate, PEM, for clients to trust.
    pub cert_pem: String,
}

impl std::fmt::Debug for DevCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DevCa").finish_non_exhaustive()
    }
}

/// A leaf certificate and its key, PEM.
#[derive(Debug, Clone)]
pub struct DevCert {
    pub cert_pem: String,
    pub key_pem: String,
}

impl DevCa {
    pub fn new(common_name: &str) -> Result<DevCa, rcgen::Error> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = params.self_signed(&key)?;
        Ok(DevCa {
            cert_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        })
    }

    /// Issues an ECDSA P-256 leaf for `names` (DNS names or IP addresses).
    pub fn issue(&self, names: &[&str]) -> Result<DevCert, rcgen::Error> {
        self.sign(names, KeyPair::generate()?, None)
    }

    /// Like [`DevCa::issue`], with an RSA-2048 key.
    pub fn issue_rsa(&self, names: &[&str]) -> Result<DevCert, rcgen::Error> {
        self.sign(names, KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256)?, None)
    }

    /// Like [`DevCa::issue`], valid from `(not_before, not_after)` as (year, month, day).
    #[allow(clippy::type_complexity)]
    pub fn issue_valid(
        &self,
        names: &[&str],
        validity: Option<((i32, u8, u8), (i32, u8, u8))>,
    ) -> Result<DevCert, rcgen::Error> {
        self.sign(names, KeyPair::generate()?, validity)
    }

    /// A rustls client that trusts this CA and speaks `versions`; with `offered`, it offers only
    /// those suites, in that order (to act as a client with a given preference).
    pub fn client_config(
        &self,
        versions: &[&'static rustls::SupportedProtocolVersion],
        offered: Option<&[rustls::CipherSuite]>,
    ) -> Result<rustls::ClientConfig, String> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(self.cert_pem.as_bytes()) {
            roots
                .add(cert.map_err(|e| e.to_string())?)
                .map_err(|e| e.to_string())?;
        }
        let mut provider = rustls::crypto::aws_lc_rs::default_provider();
        if let Some(offered) = offered {
            let all = std::mem::take(&mut provider.cipher_suites);
            provider.cipher_suites = offered
                .iter()
                .map(|want| {
                    all.iter()
                        .find(|s| s.suite() == *want)
                        .copied()
                        .ok_or_else(|| format!("{want:?}: not a suite of the provider"))
                })
                .collect::<Result<_, _>>()?;
        }
        Ok(
            rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(provider))
                .with_protocol_versions(versions)
                .map_err(|e| e.to_string())?
                .with_root_certificates(roots)
                .with_no_client_auth(),
        )
    }

    #[allow(clippy::type_complexity)]
    fn sign(
        &self,
        names: &[&str],
        key: KeyPair,
        validity: Option<((i32, u8, u8), (i32, u8, u8))>,
    ) -> Result<DevCert, rcgen::Error> {
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())?;
        if let Some(((y0, m0, d0), (y1, m1, d1))) = validity {
            params.not_before = rcgen::date_time_ymd(y0, m0, d0);
            params.not_after = rcgen::date_time_ymd(y1, m1, d1);
        }
        if let Some(first) = names.first() {
            params.distinguished_name.push(DnType::CommonName, *first);
        }
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(DevCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

impl DevCert {
    /// The leaf as a rustls key (chain of one).
    pub fn certified_key(&self) -> Result<CertifiedKey, String> {
        let cert =
            CertificateDer::from_pem_slice(self.cert_pem.as_bytes()).map_err(|e| e.to_string())?;
        let key =
            PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes()).map_err(|e| e.to_string())?;
        let signing = rustls::crypto::aws_lc_rs::default_provider()
            .key_provider
            .load_private_key(key)
            .map_err(|e| e.to_string())?;
        Ok(CertifiedKey::new(vec![cert], signing))
    }
}
