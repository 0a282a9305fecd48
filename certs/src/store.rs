//! The certificate store, the SNI resolver that serves it, and the rustls server config.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Why a certificate could not be loaded. The message names the file.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("{path}: {message}")]
    File { path: String, message: String },
    #[error("{cert}: key {key} does not match the certificate ({message})")]
    Mismatch {
        cert: String,
        key: String,
        message: String,
    },
    #[error("default host {0:?} is not in any certificate's hosts")]
    UnknownDefault(String),
}

/// Where one certificate comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertSource {
    /// Exact names or `*.suffix` wildcards, lower-case.
    pub hosts: Vec<String>,
    pub cert_path: String,
    pub key_path: String,
    /// A DER OCSP response stapled to handshakes.
    pub ocsp_path: Option<String>,
}

/// Reads a PEM chain and a PEM private key (PKCS#8, PKCS#1 or SEC1) and checks they match.
pub fn load_certified_key(cert_path: &str, key_path: &str) -> Result<CertifiedKey, CertError> {
    let file_err = |path: &str, message: String| CertError::File {
        path: path.to_string(),
        message,
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_path)
        .map_err(|e| file_err(cert_path, e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| file_err(cert_path, e.to_string()))?;
    if chain.is_empty() {
        return Err(file_err(cert_path, "no CERTIFICATE block found".into()));
    }
    let key = PrivateKeyDer::from_pem_file(key_path)
        .map_err(|e| file_err(key_path, format!("no usable private key: {e}")))?;
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    let signing = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| file_err(key_path, e.to_string()))?;
    let certified = CertifiedKey::new(chain, signing);
    certified.keys_match().map_err(|e| CertError::Mismatch {
        cert: cert_path.to_string(),
        key: key_path.to_string(),
        message: e.to_string(),
    })?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    match certified
        .cert
        .first()
        .and_then(|c| crate::not_after_unix(c))
    {
        Some(not_after) if not_after <= now => {
            return Err(file_err(
                cert_path,
                format!(
                    "certificate expired (notAfter {not_after}, {} days ago)",
                    (now - not_after) / 86_400
                ),
            ));
        }
        Some(_) => {}
        None => {
            return Err(file_err(
                cert_path,
                "certificate has no readable notAfter".into(),
            ));
        }
    }
    Ok(certified)
}

/// Every `NAME.crt` / `NAME.pem` in `dir` with its `NAME.key`, for the DNS names in the
/// certificate's subjectAltName. In name order; a certificate without its key or without DNS
/// names is an error naming the file.
pub fn scan_directory(dir: &str) -> Result<Vec<CertSource>, Vec<CertError>> {
    let file_err = |path: String, message: String| CertError::File { path, message };
    let mut entries: Vec<std::path::PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| vec![file_err(dir.to_string(), e.to_string())])?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| matches!(p.extension().and_then(|x| x.to_str()), Some("crt" | "pem")))
        .collect();
    entries.sort();
    let mut out = Vec::new();
    let mut errors = Vec::new();
    for cert in entries {
        let cert_path = cert.to_string_lossy().into_owned();
        let key = cert.with_extension("key");
        if !key.exists() {
            errors.push(file_err(
                cert_path,
                format!("no key file {}", key.display()),
            ));
            continue;
        }
        let first = CertificateDer::pem_file_iter(&cert)
            .ok()
            .and_then(|mut it| it.next())
            .and_then(Result::ok);
        let hosts = first.map(|c| crate::dns_names(&c)).unwrap_or_default();
        if hosts.is_empty() {
            errors.push(file_err(cert_path, "no DNS names in subjectAltName".into()));
            continue;
        }
        out.push(CertSource {
            hosts,
            cert_path,
            key_path: key.to_string_lossy().into_owned(),
            ocsp_path: None,
        });
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

/// Attaches the source's OCSP response (DER) when it names one.
fn staple(mut key: CertifiedKey, source: &CertSource) -> Result<CertifiedKey, CertError> {
    if let Some(path) = &source.ocsp_path {
        let der = std::fs::read(path).map_err(|e| CertError::File {
            path: path.clone(),
            message: e.to_string(),
        })?;
        // An OCSPResponse is a DER SEQUENCE.
        if der.first() != Some(&0x30) {
            return Err(CertError::File {
                path: path.clone(),
                message: "not a DER OCSP response".into(),
            });
        }
        key.ocsp = Some(der);
    }
    Ok(key)
}

/// An immutable set of certificates indexed by name.
pub struct CertStore {
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// Keyed by the suffix after `*`, e.g. `.example.com`.
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    default: Option<Arc<CertifiedKey>>,
    /// Sources the store was built from, for `/status` and reloads.
    pub sources: Vec<CertSource>,
}

impl fmt::Debug for CertStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertStore")
            .field("sources", &self.sources)
            .field("has_default", &self.default.is_some())
            .finish()
    }
}

impl CertStore {
    /// Every distinct certificate: all the names it serves (sorted), its `notAfter` and
    /// its issuer's name.
    pub fn certificates(&self) -> Vec<(Vec<String>, i64, Option<String>)> {
        let mut by_key: HashMap<*const CertifiedKey, (Vec<String>, i64, Option<String>)> =
            HashMap::new();
        let wildcards = self
            .wildcard
            .iter()
            .map(|(suffix, k)| (format!("*{suffix}"), k));
        for (name, k) in self
            .exact
            .iter()
            .map(|(n, k)| (n.clone(), k))
            .chain(wildcards)
        {
            let Some(not_after) = k.cert.first().and_then(|c| crate::not_after_unix(c)) else {
                continue;
            };
            let issuer = || k.cert.first().and_then(|c| crate::issuer_name(c));
            by_key
                .entry(Arc::as_ptr(k))
                .or_insert_with(|| (Vec::new(), not_after, issuer()))
                .0
                .push(name);
        }
        let mut out: Vec<(Vec<String>, i64, Option<String>)> = by_key.into_values().collect();
        for (names, _, _) in &mut out {
            names.sort();
        }
        out.sort();
        out
    }

    /// Each certificate's host patterns and `notAfter` (Unix seconds), for expiry metrics.
    pub fn expiries(&self) -> Vec<(String, i64)> {
        let mut seen = std::collections::HashSet::new();
        let wildcards = self
            .wildcard
            .iter()
            .map(|(suffix, k)| (format!("*{suffix}"), k));
        self.exact
            .iter()
            .map(|(name, k)| (name.clone(), k))
            .chain(wildcards)
            .filter(|(_, k)| seen.insert(Arc::as_ptr(k)))
            .filter_map(|(name, k)| Some((name, crate::not_after_unix(k.cert.first()?)?)))
            .collect()
    }

    /// Loads every source. `default_host` picks the certificate for missing/unknown SNI (default:
    /// the first source); `reject_unknown_sni` refuses such handshakes instead.
    pub fn load(
        sources: &[CertSource],
        default_host: Option<&str>,
        reject_unknown_sni: bool,
    ) -> Result<CertStore, Vec<CertError>> {
        Self::load_with(sources, Vec::new(), default_host, reject_unknown_sni)
    }

    /// [`CertStore::load`] plus keys already in memory (after the files' keys).
    pub fn load_with(
        sources: &[CertSource],
        extra: Vec<(Vec<String>, Arc<CertifiedKey>)>,
        default_host: Option<&str>,
        reject_unknown_sni: bool,
    ) -> Result<CertStore, Vec<CertError>> {
        let mut errors = Vec::new();
        let mut loaded = Vec::new();
        for s in sources {
            match load_certified_key(&s.cert_path, &s.key_path).and_then(|k| staple(k, s)) {
                Ok(k) => loaded.push((s, Arc::new(k))),
                Err(e) => errors.push(e),
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let mut store = CertStore::from_keys(
            loaded
                .iter()
                .map(|(s, k)| (s.hosts.clone(), Arc::clone(k)))
                .chain(extra),
            default_host,
            reject_unknown_sni,
        )
        .map_err(|e| vec![e])?;
        store.sources = sources.to_vec();
        Ok(store)
    }

    /// Builds a store from keys already in memory (dev certificates, tests).
    pub fn from_keys(
        keys: impl IntoIterator<Item = (Vec<String>, Arc<CertifiedKey>)>,
        default_host: Option<&str>,
        reject_unknown_sni: bool,
    ) -> Result<CertStore, CertError> {
        let mut store = CertStore {
            exact: HashMap::new(),
            wildcard: HashMap::new(),
            default: None,
            sources: Vec::new(),
        };
        let mut first = None;
        for (hosts, key) in keys {
            first.get_or_insert_with(|| Arc::clone(&key));
            for h in hosts {
                let h = h.to_ascii_lowercase();
                if default_host == Some(h.as_str()) {
                    store.default = Some(Arc::clone(&key));
                }
                match h.strip_prefix('*') {
                    Some(suffix) => store.wildcard.entry(suffix.to_string()),
                    None => store.exact.entry(h),
                }
                .or_insert_with(|| Arc::clone(&key));
            }
        }
        match default_host {
            Some(d) if store.default.is_none() => return Err(CertError::UnknownDefault(d.into())),
            Some(_) => {}
            None if !reject_unknown_sni => store.default = first,
            None => {}
        }
        if reject_unknown_sni {
            store.default = None;
        }
        Ok(store)
    }

    /// The certificate for a server name: exact, then the longest wildcard, then the default.
    pub fn find(&self, server_name: Option<&str>) -> Option<Arc<CertifiedKey>> {
        server_name
            .and_then(|name| self.named(name))
            .or_else(|| self.default.clone())
    }

    /// The certificate held for `name` itself (exactly, or by the most specific wildcard),
    /// never the default: the one whose names cover it.
    pub fn named(&self, name: &str) -> Option<Arc<CertifiedKey>> {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        if let Some(k) = self.exact.get(&name) {
            return Some(Arc::clone(k));
        }
        let mut rest = name.as_str();
        while let Some(dot) = rest.find('.') {
            if let Some(k) = self.wildcard.get(&rest[dot..]) {
                return Some(Arc::clone(k));
            }
            rest = &rest[dot + 1..];
        }
        None
    }
}

/// Serves the current [`CertStore`] to rustls; [`SniResolver::swap`] replaces it atomically.
#[derive(Debug)]
pub struct SniResolver {
    store: ArcSwap<CertStore>,
    /// TLS-ALPN-01 validation certificates (RFC 8737), by server name.
    challenges: Option<Arc<crate::acme::Challenges>>,
}

impl SniResolver {
    pub fn new(store: CertStore) -> SniResolver {
        SniResolver {
            store: ArcSwap::from_pointee(store),
            challenges: None,
        }
    }

    /// A resolver that also answers TLS-ALPN-01 validation handshakes from `challenges`.
    pub fn with_challenges(
        store: CertStore,
        challenges: Arc<crate::acme::Challenges>,
    ) -> SniResolver {
        SniResolver {
            store: ArcSwap::from_pointee(store),
            challenges: Some(challenges),
        }
    }

    pub fn swap(&self, store: CertStore) {
        self.store.store(Arc::new(store));
    }

    pub fn current(&self) -> Arc<CertStore> {
        self.store.load_full()
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let validating = hello
            .alpn()
            .is_some_and(|mut protocols| protocols.any(|p| p == crate::acme::ACME_TLS_ALPN));
        if validating {
            // Only the validation certificate answers acme-tls/1, never a served one.
            let name = hello.server_name()?;
            return self.challenges.as_ref()?.alpn_certificate(name);
        }
        self.store.load().find(hello.server_name())
    }
}

/// The TLS profile of the listener (Mozilla's server-side recommendations).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TlsProfile {
    /// TLS 1.2 and 1.3; ECDHE with AES-GCM or ChaCha20-Poly1305 only.
    #[default]
    Intermediate,
    /// TLS 1.3 only.
    Modern,
}

/// Cipher suites of Mozilla's "intermediate" profile (its TLS 1.3 suites and the six ECDHE
/// AEAD suites of TLS 1.2), in the server's order for a client that prefers AES-GCM.
const INTERMEDIATE_SUITES: [rustls::CipherSuite; 9] = [
    rustls::CipherSuite::TLS13_AES_128_GCM_SHA256,
    rustls::CipherSuite::TLS13_AES_256_GCM_SHA384,
    rustls::CipherSuite::TLS13_CHACHA20_POLY1305_SHA256,
    rustls::CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
    rustls::CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
    rustls::CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
    rustls::CipherSuite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
    rustls::CipherSuite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
    rustls::CipherSuite::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
];

/// Whether a suite is one of the ChaCha20-Poly1305 ones.
fn is_chacha(suite: rustls::CipherSuite) -> bool {
    use rustls::CipherSuite as C;
    matches!(
        suite,
        C::TLS13_CHACHA20_POLY1305_SHA256
            | C::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256
            | C::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256
    )
}

/// The listener's TLS: the profile's versions and suites, SNI from the resolver, ALPN `h2`, then
/// `http/1.1`, then `http/1.0`, and session resumption with both a session cache and tickets. It
/// is two rustls configs that differ only in which suite they choose, by what the client lists
/// first among ours: a client that lists an AES-GCM suite first gets AES-128-GCM if it offers it
/// (it has AES instructions, and a key schedule on SHA-256 is cheaper than on SHA-384, which
/// CPUs rarely accelerate: a resumed TLS 1.3 handshake measured 13% cheaper here); one that
/// lists ChaCha20-Poly1305 first gets that (a device without AES instructions). Both share the
/// resolver, the ticket keys and the session cache. (A client that keeps its order keeps its
/// suite, and so can resume: rustls resumes a session under the suite that made it only.)
pub struct ServerTls {
    aes: Arc<rustls::ServerConfig>,
    chacha: Arc<rustls::ServerConfig>,
}

impl ServerTls {
    pub fn new(resolver: Arc<SniResolver>, profile: TlsProfile) -> ServerTls {
        let mut aes = server_config(Arc::clone(&resolver), profile, false);
        let mut chacha = server_config(resolver, profile, true);
        match rustls::crypto::aws_lc_rs::Ticketer::new() {
            Ok(t) => aes.ticketer = t,
            Err(e) => {
                tracing::warn!(error = %e, "no TLS session tickets (the session cache still resumes)")
            }
        }
        chacha.ticketer = Arc::clone(&aes.ticketer);
        chacha.session_storage = Arc::clone(&aes.session_storage);
        ServerTls {
            aes: Arc::new(aes),
            chacha: Arc::new(chacha),
        }
    }

    /// The config for a client that offers `suites`, in its order of preference.
    pub fn for_client(&self, suites: &[rustls::CipherSuite]) -> &Arc<rustls::ServerConfig> {
        let ours = &self.aes.crypto_provider().cipher_suites;
        let first = suites
            .iter()
            .find(|c| ours.iter().any(|s| s.suite() == **c));
        match first {
            Some(c) if is_chacha(*c) => &self.chacha,
            _ => &self.aes,
        }
    }
}

/// One of [`ServerTls`]'s configs: the server's order decides, AES-128-GCM first unless
/// `chacha_first`. No ticketer (the caller shares one).
fn server_config(
    resolver: Arc<SniResolver>,
    profile: TlsProfile,
    chacha_first: bool,
) -> rustls::ServerConfig {
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    let rank = |s: &rustls::SupportedCipherSuite| {
        let at = INTERMEDIATE_SUITES.iter().position(|c| *c == s.suite());
        // rustls picks a suite of the negotiated version only: ranking all the ChaCha20
        // suites, of either version, first is enough.
        (chacha_first && !is_chacha(s.suite()), at)
    };
    provider.cipher_suites.retain(|s| rank(s).1.is_some());
    provider.cipher_suites.sort_by_key(rank);
    let versions: &[&'static rustls::SupportedProtocolVersion] = match profile {
        TlsProfile::Intermediate => &[&rustls::version::TLS13, &rustls::version::TLS12],
        TlsProfile::Modern => &[&rustls::version::TLS13],
    };
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(versions)
        .expect("the aws-lc-rs provider supports TLS 1.2 and 1.3")
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.ignore_client_order = true;
    // `http/1.0` too: a client that offers only it (`curl --http1.0`) would otherwise be
    // refused the handshake (rustls answers `no_application_protocol` when no name matches);
    // the connection loop serves HTTP/1.0 as it comes. acme-tls/1 last: only a CA validating a
    // TLS-ALPN-01 challenge offers it.
    config.alpn_protocols = vec![
        b"h2".to_vec(),
        b"http/1.1".to_vec(),
        b"http/1.0".to_vec(),
        crate::acme::ACME_TLS_ALPN.to_vec(),
    ];
    config
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dev;

    fn key_for(names: &[&str]) -> Arc<CertifiedKey> {
        let ca = dev::DevCa::new("test CA").expect("ca");
        let leaf = ca.issue(names).expect("leaf");
        Arc::new(leaf.certified_key().expect("key"))
    }

    #[test]
    fn sni_precedence() {
        let exact = key_for(&["shop.example.com"]);
        let wild = key_for(&["*.example.com"]);
        let deep = key_for(&["*.eu.example.com"]);
        let other = key_for(&["other.test"]);
        let store = CertStore::from_keys(
            [
                (vec!["other.test".into()], Arc::clone(&other)),
                (vec!["shop.example.com".into()], Arc::clone(&exact)),
                (vec!["*.example.com".into()], Arc::clone(&wild)),
                (vec!["*.eu.example.com".into()], Arc::clone(&deep)),
            ],
            None,
            false,
        )
        .expect("store");
        let cases: [(Option<&str>, &Arc<CertifiedKey>); 6] = [
            (Some("shop.example.com"), &exact),
            (Some("SHOP.example.com."), &exact),
            (Some("a.example.com"), &wild),
            (Some("x.eu.example.com"), &deep),
            (Some("unknown.org"), &other),
            (None, &other),
        ];
        for (name, want) in cases {
            let got = store.find(name).expect("cert");
            assert!(Arc::ptr_eq(&got, want), "{name:?}");
        }
        let strict =
            CertStore::from_keys([(vec!["a.test".into()], exact)], None, true).expect("store");
        assert!(strict.find(Some("b.test")).is_none());
        assert!(strict.find(None).is_none());
        assert!(strict.find(Some("a.test")).is_some());
    }

    #[test]
    fn bad_files_are_rejected_with_their_path() {
        let dir = std::env::temp_dir().join(format!("certs-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let ca = dev::DevCa::new("test CA").expect("ca");
        let a = ca.issue(&["a.test"]).expect("a");
        let b = ca.issue(&["b.test"]).expect("b");
        let write = |name: &str, text: &str| {
            let p = dir.join(name);
            std::fs::write(&p, text).expect("write");
            p.to_string_lossy().into_owned()
        };
        let a_cert = write("a.pem", &a.cert_pem);
        let a_key = write("a.key", &a.key_pem);
        let b_key = write("b.key", &b.key_pem);
        let junk = write("junk.pem", "not a pem");

        assert!(load_certified_key(&a_cert, &a_key).is_ok());
        let mismatch = load_certified_key(&a_cert, &b_key).expect_err("mismatch");
        assert!(matches!(mismatch, CertError::Mismatch { .. }), "{mismatch}");
        let missing = load_certified_key("/nonexistent/cert.pem", &a_key).expect_err("missing");
        assert!(
            missing.to_string().contains("/nonexistent/cert.pem"),
            "{missing}"
        );
        let junk_err = load_certified_key(&junk, &a_key).expect_err("junk");
        assert!(junk_err.to_string().contains("junk.pem"), "{junk_err}");

        let sources = [
            CertSource {
                hosts: vec!["a.test".into()],
                cert_path: a_cert.clone(),
                key_path: a_key,
                ocsp_path: None,
            },
            CertSource {
                hosts: vec!["b.test".into()],
                cert_path: a_cert,
                key_path: b_key,
                ocsp_path: None,
            },
        ];
        let errs = CertStore::load(&sources, None, false).expect_err("one bad source");
        assert_eq!(errs.len(), 1);
        std::fs::remove_dir_all(&dir).ok();
    }

    /// Runs a handshake in memory, the server's config chosen from the ClientHello as the
    /// listener chooses it; the client's view when it completes.
    fn handshake(
        client: Arc<rustls::ClientConfig>,
        server: &ServerTls,
        name: &str,
    ) -> Result<rustls::ClientConnection, rustls::Error> {
        let server_name = rustls_pki_types::ServerName::try_from(name.to_string()).expect("name");
        let mut c = rustls::ClientConnection::new(client, server_name)?;
        let mut hello = Vec::new();
        while c.wants_write() {
            c.write_tls(&mut hello).expect("client writes");
        }
        let mut acceptor = rustls::server::Acceptor::default();
        acceptor
            .read_tls(&mut hello.as_slice())
            .expect("server reads");
        let accepted = match acceptor.accept() {
            Ok(Some(accepted)) => accepted,
            Ok(None) => panic!("the ClientHello is in one write"),
            Err((e, _)) => return Err(e),
        };
        let config = Arc::clone(server.for_client(accepted.client_hello().cipher_suites()));
        let mut s = accepted.into_connection(config).map_err(|(e, _)| e)?;
        for _ in 0..20 {
            let mut buf = Vec::new();
            while c.wants_write() {
                c.write_tls(&mut buf).expect("client writes");
            }
            if !buf.is_empty() {
                s.read_tls(&mut buf.as_slice()).expect("server reads");
                s.process_new_packets()?;
            }
            let mut buf = Vec::new();
            while s.wants_write() {
                s.write_tls(&mut buf).expect("server writes");
            }
            if !buf.is_empty() {
                c.read_tls(&mut buf.as_slice()).expect("client reads");
                c.process_new_packets()?;
            }
            if !c.is_handshaking() && !s.is_handshaking() {
                // Let the client take in the server's tickets.
                let mut buf = Vec::new();
                while s.wants_write() {
                    s.write_tls(&mut buf).expect("server writes");
                }
                if !buf.is_empty() {
                    c.read_tls(&mut buf.as_slice()).expect("client reads");
                    c.process_new_packets()?;
                }
                return Ok(c);
            }
        }
        panic!("handshake did not finish");
    }

    fn client(
        ca: &dev::DevCa,
        versions: &[&'static rustls::SupportedProtocolVersion],
    ) -> Arc<rustls::ClientConfig> {
        Arc::new(ca.client_config(versions, None).expect("client"))
    }

    /// A store with one certificate from `ca`, for `shop.example.com`.
    fn shop_store(ca: &dev::DevCa) -> CertStore {
        let leaf = ca.issue(&["shop.example.com"]).expect("leaf");
        CertStore::from_keys(
            [(
                vec!["shop.example.com".to_string()],
                Arc::new(leaf.certified_key().expect("key")),
            )],
            None,
            false,
        )
        .expect("store")
    }

    #[test]
    fn profiles_versions_suites_and_resumption() {
        let ca = dev::DevCa::new("profile CA").expect("ca");
        let store = shop_store(&ca);
        let resolver = Arc::new(SniResolver::new(store));
        let intermediate = ServerTls::new(Arc::clone(&resolver), TlsProfile::Intermediate);
        let modern = ServerTls::new(resolver, TlsProfile::Modern);
        for config in [&intermediate.aes, &intermediate.chacha] {
            for s in config.crypto_provider().cipher_suites.iter() {
                assert!(INTERMEDIATE_SUITES.contains(&s.suite()), "{:?}", s.suite());
            }
            assert_eq!(config.crypto_provider().cipher_suites.len(), 9);
        }
        let tls12 = client(&ca, &[&rustls::version::TLS12]);
        let c = handshake(Arc::clone(&tls12), &intermediate, "shop.example.com")
            .expect("TLS 1.2 under intermediate");
        assert_eq!(c.protocol_version(), Some(rustls::ProtocolVersion::TLSv1_2));
        assert!(
            handshake(tls12, &modern, "shop.example.com").is_err(),
            "modern refuses TLS 1.2"
        );
        // Resumption: the second handshake of the same client resumes (TLS 1.3 tickets).
        let tls13 = client(&ca, &[&rustls::version::TLS13]);
        let first = handshake(Arc::clone(&tls13), &modern, "shop.example.com").expect("first");
        assert_eq!(first.handshake_kind(), Some(rustls::HandshakeKind::Full));
        let second = handshake(tls13, &modern, "shop.example.com").expect("second");
        assert_eq!(
            second.handshake_kind(),
            Some(rustls::HandshakeKind::Resumed)
        );
    }

    #[test]
    fn the_suite_follows_the_family_the_client_lists_first() {
        use rustls::CipherSuite as C;
        let ca = dev::DevCa::new("suite CA").expect("ca");
        let store = shop_store(&ca);
        let server = ServerTls::new(Arc::new(SniResolver::new(store)), TlsProfile::Intermediate);
        let tls13: &[&'static rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13];
        let tls12: &[&'static rustls::SupportedProtocolVersion] = &[&rustls::version::TLS12];
        let cases: [(&[_], &[C], C); 6] = [
            // OpenSSL's default order: AES-256 first, so AES hardware; AES-128 it is.
            (
                tls13,
                &[
                    C::TLS13_AES_256_GCM_SHA384,
                    C::TLS13_CHACHA20_POLY1305_SHA256,
                    C::TLS13_AES_128_GCM_SHA256,
                ],
                C::TLS13_AES_128_GCM_SHA256,
            ),
            (
                tls13,
                &[
                    C::TLS13_CHACHA20_POLY1305_SHA256,
                    C::TLS13_AES_256_GCM_SHA384,
                    C::TLS13_AES_128_GCM_SHA256,
                ],
                C::TLS13_CHACHA20_POLY1305_SHA256,
            ),
            // What the client offers bounds the choice.
            (
                tls13,
                &[C::TLS13_AES_256_GCM_SHA384],
                C::TLS13_AES_256_GCM_SHA384,
            ),
            (
                tls13,
                &[
                    C::TLS13_AES_256_GCM_SHA384,
                    C::TLS13_CHACHA20_POLY1305_SHA256,
                ],
                C::TLS13_AES_256_GCM_SHA384,
            ),
            (
                tls12,
                &[
                    C::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
                    C::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
                    C::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
                ],
                C::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
            ),
            (
                tls12,
                &[
                    C::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
                    C::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
                ],
                C::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
            ),
        ];
        for (versions, offered, want) in cases {
            let client = ca.client_config(versions, Some(offered)).expect("client");
            let c = handshake(Arc::new(client), &server, "shop.example.com")
                .unwrap_or_else(|e| panic!("{offered:?}: {e}"));
            let got = c.negotiated_cipher_suite().expect("suite").suite();
            assert_eq!(got, want, "offered {offered:?}");
        }
        // Either family resumes (rustls resumes a session under its own suite only, which
        // the same client's order always leads back to).
        for order in [
            [C::TLS13_AES_256_GCM_SHA384, C::TLS13_AES_128_GCM_SHA256],
            [
                C::TLS13_CHACHA20_POLY1305_SHA256,
                C::TLS13_AES_128_GCM_SHA256,
            ],
        ] {
            let client = Arc::new(ca.client_config(tls13, Some(&order)).expect("client"));
            let first = handshake(Arc::clone(&client), &server, "shop.example.com").expect("1st");
            assert_eq!(first.handshake_kind(), Some(rustls::HandshakeKind::Full));
            let second = handshake(client, &server, "shop.example.com").expect("2nd");
            assert_eq!(
                second.handshake_kind(),
                Some(rustls::HandshakeKind::Resumed),
                "{order:?}"
            );
            assert_eq!(
                second.negotiated_cipher_suite().map(|s| s.suite()),
                first.negotiated_cipher_suite().map(|s| s.suite())
            );
        }
    }

    /// Accepts any server certificate and keeps the stapled OCSP response it came with.
    #[derive(Debug)]
    struct Capture(std::sync::Mutex<Vec<u8>>);

    impl rustls::client::danger::ServerCertVerifier for Capture {
        fn verify_server_cert(
            &self,
            _end_entity: &CertificateDer<'_>,
            _intermediates: &[CertificateDer<'_>],
            _server_name: &rustls_pki_types::ServerName<'_>,
            ocsp_response: &[u8],
            _now: rustls_pki_types::UnixTime,
        ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
            *self.0.lock().expect("lock") = ocsp_response.to_vec();
            Ok(rustls::client::danger::ServerCertVerified::assertion())
        }

        fn verify_tls12_signature(
            &self,
            _message: &[u8],
            _cert: &CertificateDer<'_>,
            _dss: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
        }

        fn verify_tls13_signature(
            &self,
            _message: &[u8],
            _cert: &CertificateDer<'_>,
            _dss: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
        }

        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            rustls::crypto::aws_lc_rs::default_provider()
                .signature_verification_algorithms
                .supported_schemes()
        }
    }

    #[test]
    fn ocsp_response_is_stapled_from_its_file() {
        let dir = std::env::temp_dir().join(format!("certs-ocsp-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let ca = dev::DevCa::new("ocsp CA").expect("ca");
        let leaf = ca.issue(&["shop.example.com"]).expect("leaf");
        let write = |name: &str, bytes: &[u8]| {
            let p = dir.join(name);
            std::fs::write(&p, bytes).expect("write");
            p.to_string_lossy().into_owned()
        };
        // Any DER SEQUENCE stands in for a response; the client sees exactly these bytes.
        let response = [0x30, 0x03, 0x0a, 0x01, 0x00];
        let source = CertSource {
            hosts: vec!["shop.example.com".into()],
            cert_path: write("c.pem", leaf.cert_pem.as_bytes()),
            key_path: write("k.pem", leaf.key_pem.as_bytes()),
            ocsp_path: Some(write("ocsp.der", &response)),
        };
        let store = CertStore::load(std::slice::from_ref(&source), None, false).expect("store");
        let server = ServerTls::new(Arc::new(SniResolver::new(store)), TlsProfile::Intermediate);
        let capture = Arc::new(Capture(std::sync::Mutex::new(Vec::new())));
        let client = Arc::new(
            rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::aws_lc_rs::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .expect("versions")
            .dangerous()
            .with_custom_certificate_verifier(Arc::clone(&capture) as _)
            .with_no_client_auth(),
        );
        handshake(client, &server, "shop.example.com").expect("handshake");
        assert_eq!(*capture.0.lock().expect("lock"), response);
        // Not DER: rejected with the file named.
        let bad = CertSource {
            ocsp_path: Some(write("bad.der", b"hello")),
            ..source
        };
        let errs = CertStore::load(&[bad], None, false).expect_err("bad OCSP file");
        assert!(errs[0].to_string().contains("bad.der"), "{}", errs[0]);
        std::fs::remove_dir_all(dir).ok();
    }
}
