//! server: starts a front door — proxy listeners, admin listener, reload triggers — from
//! options, and stops it with a drain. Used by `frontdoor run`, `frontdoor demo` and tests.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::admin::Admin;
use crate::demo::DemoOrigins;
use crate::pipeline;
use crate::state::{self, ConfigSource, Proxy, ProxyOptions};

/// How to start a front door. Listener addresses left `None` come from the config.
#[derive(Debug, Default)]
pub struct StartOptions {
    pub config: Option<ConfigSource>,
    pub region: Option<String>,
    pub http: Option<SocketAddr>,
    pub https: Option<SocketAddr>,
    pub admin: Option<SocketAddr>,
    pub admin_token: String,
    pub demo: Option<Arc<DemoOrigins>>,
    /// Certificates for the HTTPS listener when the config names none.
    pub fallback_certs: Option<certs::CertStore>,
    /// Poll the config and certificate files for changes at this interval (None: off).
    pub watch_interval: Option<Duration>,
    /// Join a fleet through etcd.
    pub fleet: Option<crate::fleet::FleetOptions>,
    /// Data-plane workers: with more than one, each proxy listener is bound once per worker
    /// with `SO_REUSEPORT` (the kernel spreads connections over them) and served by its own
    /// thread running a single-threaded runtime, as nginx runs worker processes. The first
    /// worker is the calling runtime, which also runs the admin API and background tasks.
    pub workers: usize,
}

/// A running front door.
#[derive(Debug)]
pub struct Running {
    pub proxy: Arc<Proxy>,
    pub http: Option<SocketAddr>,
    pub https: Option<SocketAddr>,
    pub admin: SocketAddr,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<bool>>,
}

impl Running {
    /// Stops accepting, drains in-flight requests up to the config's drain timeout.
    /// Returns true when everything finished in time.
    pub async fn shutdown(self) -> bool {
        let _ = self.shutdown.send(true);
        let mut clean = true;
        for t in self.tasks {
            clean &= t.await.unwrap_or(false);
        }
        clean
    }

    /// A handle that triggers the same shutdown (for signal handlers).
    pub fn trigger(&self) -> watch::Sender<bool> {
        self.shutdown.clone()
    }
}

fn stop_signal(
    rx: &watch::Receiver<bool>,
) -> impl std::future::Future<Output = ()> + Send + 'static {
    let mut rx = rx.clone();
    async move {
        let _ = rx.wait_for(|stop| *stop).await;
    }
}

/// Binds listeners and starts serving.
pub async fn start(opts: StartOptions) -> anyhow::Result<Running> {
    let source = opts
        .config
        .ok_or_else(|| anyhow::anyhow!("no config given"))?;
    let want_tls = opts.https.is_some();
    let proxy = Proxy::start(
        source,
        ProxyOptions {
            region: opts.region,
            fallback_certs: opts.fallback_certs,
            want_tls,
        },
    )
    .await
    .map_err(|errors| anyhow::anyhow!("config rejected:\n  {}", errors.join("\n  ")))?;
    let server = proxy.active().snapshot.server.clone();
    let drain = server.drain_timeout;
    let (shutdown, rx) = watch::channel(false);
    let mut tasks = Vec::new();

    let http_addr = opts.http.or(server.http);
    let https_addr = opts.https.or(server.https);
    let admin_addr = opts.admin.unwrap_or(server.admin);
    if http_addr.is_none() && https_addr.is_none() {
        anyhow::bail!("no listener: set server.http / server.https or pass --http / --https");
    }

    let limits =
        crate::listen::ConnLimits::new(server.max_connections, server.max_connections_per_ip);
    let https_tls = match https_addr {
        Some(_) => {
            let resolver = proxy
                .tls
                .clone()
                .ok_or_else(|| anyhow::anyhow!("HTTPS listener without certificates"))?;
            Some(Arc::new(certs::ServerTls::new(
                resolver,
                if proxy.active().snapshot.tls.modern {
                    certs::TlsProfile::Modern
                } else {
                    certs::TlsProfile::Intermediate
                },
            )))
        }
        None => None,
    };
    let mut bound = [None, None];
    for (slot, (name, addr, tls)) in bound
        .iter_mut()
        .zip([("http", http_addr, None), ("https", https_addr, https_tls)])
    {
        if let Some(addr) = addr {
            *slot = Some(
                spawn_proxy_listener(
                    name,
                    addr,
                    tls,
                    &limits,
                    &proxy,
                    &rx,
                    drain,
                    opts.workers,
                    &mut tasks,
                )
                .await?,
            );
        }
    }
    let [bound_http, bound_https] = bound;
    if let Some(https) = bound_https {
        proxy.set_https_port(https.port());
    }

    let admin_listener = TcpListener::bind(admin_addr)
        .await
        .map_err(|e| anyhow::anyhow!("bind admin {admin_addr}: {e}"))?;
    let bound_admin = admin_listener.local_addr()?;
    if !bound_admin.ip().is_loopback() {
        tracing::warn!(admin = %bound_admin, "the admin API listens beyond loopback without TLS: the bearer token crosses the network in clear text");
    }
    let admin = Arc::new(Admin {
        proxy: Arc::clone(&proxy),
        token: opts.admin_token,
        demo: opts.demo,
    });
    let make_admin = move |_peer| {
        let a = Arc::clone(&admin);
        hyper::service::service_fn(move |req| Arc::clone(&a).handle(req))
    };
    // The admin API answers until the data plane has drained, then stops at once.
    tasks.push(tokio::spawn(crate::listen::serve(
        "admin",
        admin_listener,
        None,
        None,
        crate::listen::HeadLimits::of(&proxy.active().snapshot.server),
        make_admin,
        stop_signal(&rx),
        Duration::from_millis(200),
        None,
    )));

    spawn_rollout_controller(Arc::clone(&proxy), rx.clone());
    if proxy.active().snapshot.tls.acme.is_some() {
        crate::acme::spawn(Arc::clone(&proxy), rx.clone(), opts.fleet.clone());
    }
    if let Some(fleet) = opts.fleet {
        crate::fleet::spawn(Arc::clone(&proxy), fleet);
    }
    if let Some(every) = opts.watch_interval {
        watch_files(Arc::clone(&proxy), every, rx.clone());
    }
    Ok(Running {
        proxy,
        http: bound_http,
        https: bound_https,
        admin: bound_admin,
        shutdown,
        tasks,
    })
}

/// Binds a data-plane listener and serves the request pipeline on it; returns the bound address.
#[allow(clippy::too_many_arguments)]
async fn spawn_proxy_listener(
    name: &'static str,
    addr: SocketAddr,
    tls: Option<Arc<certs::ServerTls>>,
    limits: &Arc<crate::listen::ConnLimits>,
    proxy: &Arc<Proxy>,
    stop: &watch::Receiver<bool>,
    drain: Duration,
    workers: usize,
    tasks: &mut Vec<JoinHandle<bool>>,
) -> anyhow::Result<SocketAddr> {
    let bind = |addr: SocketAddr| -> anyhow::Result<TcpListener> {
        let socket = if addr.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        if workers > 1 {
            socket.set_reuseport(true)?;
        }
        socket
            .bind(addr)
            .and_then(|()| socket.listen(4096))
            .map_err(|e| anyhow::anyhow!("bind {name} {addr}: {e}"))
    };
    let first = bind(addr)?;
    let bound = first.local_addr()?;
    // `proxy_protocol`: the trusted proxies' connections open with a PROXY header. A listener
    // setting, read at start.
    let balancers: Option<Arc<[routes::Cidr]>> = {
        let server = &proxy.active().snapshot.server;
        server
            .proxy_protocol
            .then(|| server.trusted_proxies.iter().copied().collect())
    };
    let serve = |listener: TcpListener, tls: Option<Arc<certs::ServerTls>>| {
        let p = Arc::clone(proxy);
        let make = move |peer: crate::classify::Peer| {
            let p = Arc::clone(&p);
            hyper::service::service_fn(move |req| {
                pipeline::handle(Arc::clone(&p), peer.clone(), req)
            })
        };
        crate::listen::serve(
            name,
            listener,
            tls,
            Some(Arc::clone(limits)),
            crate::listen::HeadLimits::of(&proxy.active().snapshot.server),
            make,
            stop_signal(stop),
            drain,
            balancers.clone(),
        )
    };
    for worker in 1..workers {
        // Same port (also when the first was port 0); the worker's runtime registers it.
        let listener = bind(bound)?.into_std()?;
        let runtime =
            crate::telemetry::log_hooks(&mut tokio::runtime::Builder::new_current_thread())
                .enable_all()
                .build()?;
        let future = {
            let _guard = runtime.enter();
            serve(TcpListener::from_std(listener)?, tls.clone())
        };
        let (finished, done) = tokio::sync::oneshot::channel();
        std::thread::Builder::new()
            .name(format!("{name}-worker-{worker}"))
            .spawn(move || {
                let clean = runtime.block_on(future);
                // The last lines this thread logged (a current-thread runtime's stop hook is
                // for its blocking threads, not the thread that runs it).
                crate::telemetry::flush_local();
                let _ = finished.send(clean);
            })?;
        tasks.push(tokio::spawn(async move { done.await.unwrap_or(false) }));
    }
    tasks.push(tokio::spawn(serve(first, tls)));
    Ok(bound)
}

/// How often the rollout controller judges the candidates: a breach is acted on within this
/// long of the window crossing a gate.
pub const CONTROLLER_TICK: Duration = Duration::from_millis(250);

/// Runs the rollout controller until shutdown.
fn spawn_rollout_controller(proxy: Arc<Proxy>, mut stop: watch::Receiver<bool>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(CONTROLLER_TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.wait_for(|s| *s) => return,
            }
            for e in proxy.rollouts.tick() {
                tracing::warn!(route = %e.route, action = %e.action, reason = %e.reason, weight = e.weight_after, "rollout changed by the controller");
            }
        }
    });
}

/// Reloads when the config file or a certificate file changes (content, not mtime).
fn watch_files(proxy: Arc<Proxy>, every: Duration, mut stop: watch::Receiver<bool>) {
    tokio::spawn(async move {
        let mut last = state::watched_fingerprint(&proxy);
        if last.is_none() {
            return;
        }
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.wait_for(|s| *s) => return,
            }
            let now = state::watched_fingerprint(&proxy);
            if now != last {
                tracing::info!("config or certificate files changed; reloading");
                let _ = proxy.reload().await;
                // Re-read: a successful reload may have changed which cert files are watched.
                last = state::watched_fingerprint(&proxy);
            }
        }
    });
}
