//! State and hot reload: the one [`ArcSwap`] holding everything a request reads ([`Active`]),
//! and the reload that builds a whole new one, validates it, and swaps it in one store — or
//! keeps the old one and reports every error.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use certs::{CertSource, CertStore, SniResolver};
use routes::Snapshot;

use crate::forward::{self, Upstreams};
use crate::telemetry::{self, RouteMetrics};

/// Everything one request reads, consistent with one config version.
#[derive(Debug)]
pub struct Active {
    pub snapshot: Snapshot,
    pub upstreams: Upstreams,
    /// Pre-registered metric handles by route index.
    /// Shared with the answers in flight, which count how they end.
    pub route_metrics: Vec<Arc<RouteMetrics>>,
    /// The country database, when `classify.geoip_db` is set.
    pub geoip: Option<crate::geoip::GeoIp>,
    /// Rate limiters by route index.
    pub limiters: Vec<Option<Arc<crate::limit::RateLimiter>>>,
    /// Cache rules and the shared cache (kept across reloads while its limits hold).
    pub cache: crate::cache::CacheRuntime,
    /// `x-served-region` values by region index, built once per snapshot.
    region_headers: Vec<http::HeaderValue>,
    /// Our `Via` entries by protocol version, built once per snapshot.
    pub via: crate::classify::ViaValues,
    /// The classification headers' names, parsed once per snapshot: a lookup by text parses
    /// the name each time.
    pub classify_headers: ClassifyHeaders,
    /// `Strict-Transport-Security` for answers over HTTPS (`server.hsts`).
    pub hsts: Option<http::HeaderValue>,
    /// Each route's changes to its requests' and answers' header fields, by route index.
    pub route_headers: Vec<RouteHeaders>,
}

/// A route's `request_headers` and `response_headers`, when it has any.
#[derive(Debug, Default)]
pub struct RouteHeaders {
    pub request: Option<crate::classify::HeaderEdits>,
    pub response: Option<crate::classify::HeaderEdits>,
}

/// `classify.country_header`, `jurisdiction_header` and the tenant header as header names.
#[derive(Debug)]
pub struct ClassifyHeaders {
    pub country: http::HeaderName,
    pub jurisdiction: http::HeaderName,
    pub tenant: Option<http::HeaderName>,
}

impl ClassifyHeaders {
    fn new(c: &routes::Classify) -> Result<ClassifyHeaders, Vec<String>> {
        // Validated when the config loaded; an error here would be a validation gap.
        let name = |field: &str, n: &str| {
            http::HeaderName::from_bytes(n.as_bytes())
                .map_err(|_| vec![format!("classify.{field}: {n:?} is not a header name")])
        };
        Ok(ClassifyHeaders {
            country: name("country_header", &c.country_header)?,
            jurisdiction: name("jurisdiction_header", &c.jurisdiction_header)?,
            tenant: match &c.tenant_header {
                Some(t) => Some(name("tenants.header", t)?),
                None => None,
            },
        })
    }
}

impl Active {
    /// `x-served-region` value for a region (names are validated header-safe at load).
    pub fn region_header(&self, region: routes::RegionId) -> http::HeaderValue {
        self.region_headers
            .get(region.0)
            .cloned()
            .unwrap_or_else(|| http::HeaderValue::from_static("invalid"))
    }
}

/// Where the config comes from.
#[derive(Debug, Clone)]
pub enum ConfigSource {
    File(PathBuf),
    /// Text held in memory (tests; `--config -`).
    Inline(String),
}

/// Outcome of the latest reloads, for `/status`.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ReloadStatus {
    pub loaded_at_unix: u64,
    pub reloads_ok: u64,
    pub reloads_rejected: u64,
    /// Errors of the last rejected attempt (cleared by a successful one).
    pub last_errors: Vec<String>,
}

/// The proxy's shared state: one per process, shared by every connection.
#[derive(Debug)]
pub struct Proxy {
    active: ArcSwap<Active>,
    pub source: ConfigSource,
    upstream_shared: forward::Shared,
    pub status: Mutex<ReloadStatus>,
    /// Serialises reloads so each builds on the one before.
    reload_lock: tokio::sync::Mutex<()>,
    /// The TLS listener's certificates (None: no TLS listener).
    pub tls: Option<Arc<SniResolver>>,
    /// Certificates from config files are used; otherwise the resolver keeps what it was given.
    pub tls_from_config: bool,
    /// The `--region` flag, which wins over `server.region`.
    pub region_override: Option<String>,
    /// Run-time rollout state (weights, phases, windows, events).
    pub rollouts: crate::rollout::Rollouts,
    /// Fleet status for `/status` (None: not in fleet mode), kept fresh by the fleet task.
    pub fleet_status: Mutex<Option<serde_json::Value>>,
    /// HTTP-01 answers while an ACME order is being validated.
    pub acme_challenges: Arc<certs::acme::Challenges>,
    /// The HTTPS listener's port once bound (0: none), named by redirects to HTTPS.
    https_port: std::sync::atomic::AtomicU16,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Options fixed at start.
#[derive(Debug, Default)]
pub struct ProxyOptions {
    pub region: Option<String>,
    /// Certificates to serve when the config lists none (the demo's dev certificate).
    pub fallback_certs: Option<CertStore>,
    /// Start a TLS resolver even without configured certificates (an HTTPS listener is wanted).
    pub want_tls: bool,
}

impl Proxy {
    /// Loads the first config; an error here means the process should not start.
    pub async fn start(
        source: ConfigSource,
        options: ProxyOptions,
    ) -> Result<Arc<Proxy>, Vec<String>> {
        let text = read(&source)?;
        let snapshot = parse(&text, options.region.as_deref())?;
        let tls_from_config = !snapshot.tls.certificates.is_empty()
            || !snapshot.tls.directories.is_empty()
            || snapshot.tls.acme.is_some();
        let acme_challenges: Arc<certs::acme::Challenges> = Arc::default();
        let tls = if tls_from_config {
            Some(Arc::new(SniResolver::with_challenges(
                load_certs(&snapshot)?,
                Arc::clone(&acme_challenges),
            )))
        } else if options.want_tls || snapshot.server.https.is_some() {
            let store = options.fallback_certs.ok_or_else(|| {
                vec!["tls: an HTTPS listener needs [tls] certificates".to_string()]
            })?;
            Some(Arc::new(SniResolver::new(store)))
        } else {
            None
        };
        if let Some(resolver) = &tls {
            telemetry::record_certificates(&resolver.current());
        }
        let upstream_shared = forward::Shared::default();
        let active = build_active(snapshot, &upstream_shared, None).await?;
        record_config(&active.snapshot.hash, None);
        let proxy = Proxy {
            active: ArcSwap::from_pointee(active),
            source,
            upstream_shared,
            status: Mutex::new(ReloadStatus {
                loaded_at_unix: unix_now(),
                ..Default::default()
            }),
            reload_lock: tokio::sync::Mutex::new(()),
            tls,
            tls_from_config,
            region_override: options.region,
            rollouts: crate::rollout::Rollouts::default(),
            fleet_status: Mutex::new(None),
            acme_challenges,
            https_port: std::sync::atomic::AtomicU16::new(0),
        };
        proxy.rollouts.sync(&proxy.active().snapshot);
        Ok(Arc::new(proxy))
    }

    /// The current state; cheap (no lock, one atomic load).
    pub fn active(&self) -> arc_swap::Guard<Arc<Active>> {
        self.active.load()
    }

    pub fn active_full(&self) -> Arc<Active> {
        self.active.load_full()
    }

    /// Notes the port the HTTPS listener was bound to.
    pub fn set_https_port(&self, port: u16) {
        self.https_port
            .store(port, std::sync::atomic::Ordering::Relaxed);
    }

    /// The port a redirect to HTTPS names: `server.https_redirect_port`, else the HTTPS
    /// listener's, else 443.
    pub fn https_redirect_port(&self, server: &routes::Server) -> u16 {
        server.https_redirect_port.unwrap_or_else(|| {
            match self.https_port.load(std::sync::atomic::Ordering::Relaxed) {
                0 => 443,
                port => port,
            }
        })
    }

    /// Rebuilds the certificate store from the current config's files (new ACME certificate,
    /// `proxyctl certs reload`). On any error the old store keeps serving. Returns the number
    /// of certificates now served.
    pub fn reload_tls(&self) -> Result<usize, Vec<String>> {
        let Some(resolver) = &self.tls else {
            return Err(vec!["no TLS listener".to_string()]);
        };
        match load_certs(&self.active().snapshot) {
            Ok(store) => {
                telemetry::record_certificates(&store);
                let n = store.certificates().len();
                resolver.swap(store);
                Ok(n)
            }
            Err(errors) => {
                tracing::warn!(
                    ?errors,
                    "certificates not reloaded; the old ones keep serving"
                );
                Err(errors)
            }
        }
    }

    /// Re-reads the config (and certificate files) and swaps in the result. On any error the
    /// running state is untouched and every error is returned.
    pub async fn reload(&self) -> Result<String, Vec<String>> {
        self.reload_with(None).await
    }

    /// Reloads from config text given here (the fleet's config in etcd) instead of the source.
    pub async fn reload_text(&self, text: String) -> Result<String, Vec<String>> {
        self.reload_with(Some(text)).await
    }

    async fn reload_with(&self, text: Option<String>) -> Result<String, Vec<String>> {
        let _serial = self.reload_lock.lock().await;
        let result = self.try_reload(text).await;
        let mut status = self.status.lock().unwrap_or_else(|p| p.into_inner());
        let label = match &result {
            Ok(_) => {
                status.reloads_ok += 1;
                status.loaded_at_unix = unix_now();
                status.last_errors.clear();
                "ok"
            }
            Err(errors) => {
                status.reloads_rejected += 1;
                status.last_errors = errors.clone();
                tracing::warn!(errors = ?errors, "config reload rejected; the previous config keeps serving");
                "rejected"
            }
        };
        metrics::counter!(telemetry::CONFIG_RELOADS, telemetry::L_RESULT => label).increment(1);
        result
    }

    async fn try_reload(&self, text: Option<String>) -> Result<String, Vec<String>> {
        let text = match text {
            Some(t) => t,
            None => read(&self.source)?,
        };
        let snapshot = parse(&text, self.region_override.as_deref())?;
        let old = self.active.load_full();
        let mut warnings = Vec::new();
        if snapshot.server.http != old.snapshot.server.http
            || snapshot.server.https != old.snapshot.server.https
            || snapshot.server.admin != old.snapshot.server.admin
        {
            warnings.push(
                "listener addresses changed: they take effect at the next restart".to_string(),
            );
        }
        let certs = match (&self.tls, self.tls_from_config) {
            (Some(_), true) => Some(load_certs(&snapshot)?),
            (None, _)
                if !snapshot.tls.certificates.is_empty()
                    || !snapshot.tls.directories.is_empty()
                    || snapshot.tls.acme.is_some() =>
            {
                warnings.push("certificates configured but no TLS listener is running".to_string());
                None
            }
            _ => None,
        };
        let new = build_active(snapshot, &self.upstream_shared, Some(&old.upstreams)).await?;
        let hash = new.snapshot.hash.clone();
        // Certificates first: a request seeing the new routes never meets the old certs' gap.
        if let (Some(resolver), Some(store)) = (&self.tls, certs) {
            telemetry::record_certificates(&store);
            resolver.swap(store);
        }
        self.active.store(Arc::new(new));
        self.rollouts.sync(&self.active().snapshot);
        record_config(&hash, Some(&old.snapshot.hash));
        self.forget_unused_health();
        tracing::info!(hash = %hash, warnings = ?warnings, "config reloaded");
        Ok(if warnings.is_empty() {
            hash
        } else {
            format!("{hash} ({})", warnings.join("; "))
        })
    }

    /// Drops health state of addresses the current config no longer has.
    fn forget_unused_health(&self) {
        let active = self.active.load();
        let in_use: std::collections::HashSet<(String, std::net::SocketAddr)> = active
            .upstreams
            .clusters
            .iter()
            .flat_map(|c| {
                c.members
                    .load()
                    .iter()
                    .map(|m| (c.config.name.clone(), m.addr))
                    .collect::<Vec<_>>()
            })
            .collect();
        self.upstream_shared.health.retain(|k| in_use.contains(k));
    }
}

fn read(source: &ConfigSource) -> Result<String, Vec<String>> {
    match source {
        ConfigSource::Inline(t) => Ok(t.clone()),
        ConfigSource::File(p) => {
            std::fs::read_to_string(p).map_err(|e| vec![format!("{}: {e}", p.display())])
        }
    }
}

/// Parses and validates; applies the `--region` override (which must name a declared region).
pub fn parse(text: &str, region: Option<&str>) -> Result<Snapshot, Vec<String>> {
    let mut snapshot =
        routes::load(text).map_err(|e| e.0.iter().map(ToString::to_string).collect::<Vec<_>>())?;
    if let Some(name) = region {
        let id = snapshot.region_named(name).ok_or_else(|| {
            vec![format!(
                "--region: unknown region {name:?} (declare it under [regions])"
            )]
        })?;
        snapshot.server.region = Some(id);
    }
    Ok(snapshot)
}

fn load_certs(snapshot: &Snapshot) -> Result<CertStore, Vec<String>> {
    let mut sources: Vec<CertSource> = snapshot
        .tls
        .certificates
        .iter()
        .map(|c| CertSource {
            hosts: c.hosts.clone(),
            cert_path: c.cert.clone(),
            key_path: c.key.clone(),
            ocsp_path: c.ocsp.clone(),
        })
        .collect();
    for dir in &snapshot.tls.directories {
        let found = certs::scan_directory(dir)
            .map_err(|errs| errs.iter().map(|e| format!("tls: {e}")).collect::<Vec<_>>())?;
        sources.extend(found);
    }
    let mut placeholder = None;
    if let Some(acme) = &snapshot.tls.acme {
        if certs::acme::stored_not_after(&crate::acme::settings(acme)).is_some() {
            sources.push(CertSource {
                hosts: acme.hosts.clone(),
                cert_path: acme.cert_path(),
                key_path: acme.key_path(),
                ocsp_path: None,
            });
        } else {
            // Not issued yet: a self-signed stand-in keeps the listener up meanwhile.
            let hosts: Vec<&str> = acme.hosts.iter().map(String::as_str).collect();
            let key = certs::dev::DevCa::new("frontdoor ACME placeholder")
                .and_then(|ca| ca.issue(&hosts))
                .map_err(|e| vec![format!("tls.acme: placeholder certificate: {e}")])?
                .certified_key()
                .map_err(|e| vec![format!("tls.acme: placeholder certificate: {e}")])?;
            placeholder = Some((acme.hosts.clone(), Arc::new(key)));
        }
    }
    CertStore::load_with(
        &sources,
        placeholder.into_iter().collect(),
        snapshot.tls.default_host.as_deref(),
        snapshot.tls.reject_unknown_sni,
    )
    .map_err(|errs| errs.iter().map(|e| format!("tls: {e}")).collect())
}

async fn build_active(
    snapshot: Snapshot,
    shared: &forward::Shared,
    previous: Option<&Upstreams>,
) -> Result<Active, Vec<String>> {
    let geoip = match &snapshot.classify.geoip_db {
        Some(path) => Some(crate::geoip::GeoIp::open(path).map_err(|e| vec![e])?),
        None => None,
    };
    let upstreams = Upstreams::build(&snapshot, shared, previous).await?;
    let route_metrics = snapshot
        .routes
        .iter()
        .map(|r| {
            Arc::new(RouteMetrics::new(
                &r.name,
                &snapshot.cluster(r.cluster).name,
            ))
        })
        .collect();
    // Limiters carry over a reload when the route keeps its name and limit, so a reload
    // does not hand every client a fresh burst.
    let limiters = snapshot
        .routes
        .iter()
        .map(|r| {
            let cfg = r.rate_limit.clone()?;
            let mut kept = shared.limiters.lock().unwrap_or_else(|p| p.into_inner());
            let l = kept
                .entry(r.name.clone())
                .and_modify(|l| {
                    if l.config != cfg {
                        *l = Arc::new(crate::limit::RateLimiter::new(cfg.clone()));
                    }
                })
                .or_insert_with(|| Arc::new(crate::limit::RateLimiter::new(cfg.clone())));
            Some(Arc::clone(l))
        })
        .collect();
    let cache = {
        let mut kept = shared.cache.lock().unwrap_or_else(|p| p.into_inner());
        let rt = crate::cache::CacheRuntime::new(&snapshot.cache, kept.as_ref());
        *kept = rt.store.clone();
        rt
    };
    let region_headers = snapshot
        .regions
        .iter()
        .map(|r| {
            http::HeaderValue::from_str(&r.name)
                .unwrap_or_else(|_| http::HeaderValue::from_static("invalid"))
        })
        .collect();
    let via = crate::classify::ViaValues::new(&snapshot.server.via);
    let classify_headers = ClassifyHeaders::new(&snapshot.classify)?;
    let route_headers = snapshot
        .routes
        .iter()
        .enumerate()
        .map(|(i, r)| {
            // Validated when the config loaded; an error here would be a validation gap.
            let edits = |ops, which| {
                crate::classify::HeaderEdits::of(ops)
                    .map_err(|field| vec![format!("routes[{i}].{which}: {field:?}")])
            };
            Ok(RouteHeaders {
                request: edits(&r.request_headers, "request_headers")?,
                response: edits(&r.response_headers, "response_headers")?,
            })
        })
        .collect::<Result<Vec<_>, Vec<String>>>()?;
    let hsts = match &snapshot.server.hsts {
        // Built by validation from digits and fixed words; an error here would be its gap.
        Some(v) => {
            Some(http::HeaderValue::from_str(v).map_err(|_| vec![format!("server.hsts: {v:?}")])?)
        }
        None => None,
    };
    // Nothing after this rejects the config: the endpoints take its caps now.
    upstreams.apply_limits();
    Ok(Active {
        snapshot,
        upstreams,
        route_metrics,
        geoip,
        limiters,
        cache,
        region_headers,
        via,
        classify_headers,
        hsts,
        route_headers,
    })
}

fn record_config(hash: &str, old: Option<&str>) {
    telemetry::prometheus();
    if let Some(old) = old
        && old != hash
    {
        metrics::gauge!(telemetry::CONFIG_INFO, telemetry::L_HASH => old.to_string()).set(0.0);
    }
    metrics::gauge!(telemetry::CONFIG_INFO, telemetry::L_HASH => hash.to_string()).set(1.0);
}

/// Fingerprint of the config file and every certificate file it names, for change polling.
pub fn watched_fingerprint(proxy: &Proxy) -> Option<String> {
    let ConfigSource::File(path) = &proxy.source else {
        return None;
    };
    let mut text = std::fs::read_to_string(path).unwrap_or_default();
    for c in &proxy.active().snapshot.tls.certificates {
        for f in [&c.cert, &c.key] {
            text.push_str(&std::fs::read_to_string(f).unwrap_or_default());
        }
        if let Some(ocsp) = &c.ocsp {
            text.push_str(&format!("{:?}", std::fs::read(ocsp).unwrap_or_default()));
        }
    }
    for dir in &proxy.active().snapshot.tls.directories {
        let mut files: Vec<_> = std::fs::read_dir(dir)
            .map(|it| it.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default();
        files.sort();
        for f in files {
            text.push_str(&f.to_string_lossy());
            text.push_str(&std::fs::read_to_string(&f).unwrap_or_default());
        }
    }
    Some(routes::content_hash(&text))
}
