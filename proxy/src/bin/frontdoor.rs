//! `frontdoor`: run the proxy (`run`), the self-contained demo (`demo`), or validate a config
//! (`check`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use frontdoor::demo::{DEMO_CONFIG, DemoOrigins};
use frontdoor::server::{self, StartOptions};

use frontdoor::state::ConfigSource;

// mimalloc: per-request allocations (header maps, bodies, futures) cost about half of glibc's
// malloc/free on the request path (benches/README.md).
#[global_allocator]
static ALLOCATOR: Allocator = Allocator;

/// mimalloc, asked for a plain block when the alignment needs no more than a word.
///
/// `mimalloc::MiMalloc` asks for every block with `mi_malloc_aligned`, whose fast path covers
/// blocks up to 1 KiB only: a larger one whose size class is not a power of two (the futures
/// boxed per request: 1,120, 1,504 and 3,280 bytes, all 8-aligned) goes through its
/// over-allocating path, ~200 instructions where `mi_malloc` takes a few dozen. Every mimalloc
/// block is aligned to a word at least (its size classes are multiples of 8), so a layout
/// aligned to a word or less needs nothing else; the rest still go through `MiMalloc`.
struct Allocator;

/// The alignment every mimalloc block has.
const WORD: usize = std::mem::size_of::<usize>();

// SAFETY: each method passes its arguments to mimalloc, which returns blocks of at least the
// size asked for, aligned to a word at least (asked only when the layout needs no more) or by
// `mi_*_aligned` (through `MiMalloc`) otherwise, or null on failure; `mi_free` and
// `mi_realloc` take any block from either family.
#[allow(unsafe_code)]
unsafe impl std::alloc::GlobalAlloc for Allocator {
    #[inline]
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        if layout.align() <= WORD {
            // SAFETY: see the impl's.
            unsafe { libmimalloc_sys::mi_malloc(layout.size()).cast() }
        } else {
            // SAFETY: the caller's contract, passed on.
            unsafe { mimalloc::MiMalloc.alloc(layout) }
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: std::alloc::Layout) -> *mut u8 {
        if layout.align() <= WORD {
            // SAFETY: see the impl's.
            unsafe { libmimalloc_sys::mi_zalloc(layout.size()).cast() }
        } else {
            // SAFETY: the caller's contract, passed on.
            unsafe { mimalloc::MiMalloc.alloc_zeroed(layout) }
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        // SAFETY: the caller's contract, passed on (`mi_free` takes any mimalloc block).
        unsafe { mimalloc::MiMalloc.dealloc(ptr, layout) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new_size: usize) -> *mut u8 {
        if layout.align() <= WORD {
            // SAFETY: `ptr` is a block of this allocator (the caller's contract).
            unsafe { libmimalloc_sys::mi_realloc(ptr.cast(), new_size).cast() }
        } else {
            // SAFETY: the caller's contract, passed on.
            unsafe { mimalloc::MiMalloc.realloc(ptr, layout, new_size) }
        }
    }
}

#[derive(Parser, Debug)]
#[command(
    name = "frontdoor",
    version,
    about = "Edge reverse proxy and traffic router"
)]
struct Cli {
    /// Worker threads of one shared runtime (default: one per CPU; 1 = single-threaded).
    #[arg(
        long,
        global = true,
        env = "FRONTDOOR_THREADS",
        conflicts_with = "workers"
    )]
    threads: Option<usize>,
    /// Instead of a shared runtime: N data-plane workers, each a thread with its own
    /// single-threaded runtime and its own SO_REUSEPORT listeners (nginx-style workers).
    #[arg(long, global = true, env = "FRONTDOOR_WORKERS")]
    workers: Option<usize>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the proxy on a config file.
    Run {
        /// Path of the TOML config.
        #[arg(long, short)]
        config: PathBuf,
        #[command(flatten)]
        common: Common,
    },
    /// Run a self-contained demo: front door, HTTPS with a dev certificate, demo origins.
    Demo {
        #[arg(long, default_value = "127.0.0.1:8080")]
        http: SocketAddr,
        #[arg(long, default_value = "127.0.0.1:8443")]
        https: SocketAddr,
        #[arg(long, default_value = "127.0.0.1:9901")]
        admin: SocketAddr,
        /// Admin token; generated and printed when not given.
        #[arg(long, env = "FRONTDOOR_ADMIN_TOKEN", hide_env_values = true)]
        admin_token: Option<String>,
        /// Where the dev CA and leaf are written.
        #[arg(long, default_value_os_t = std::env::temp_dir().join("frontdoor-demo"))]
        state_dir: PathBuf,
    },
    /// Validate a config: every error with its path (exit 1), or a summary (exit 0).
    Check { config: PathBuf },
    /// Certificates for development.
    Certs {
        #[command(subcommand)]
        command: CertsCommand,
    },
}

#[derive(Subcommand, Debug)]
enum CertsCommand {
    /// Write a local CA and a leaf for NAMES (ca.pem, cert.pem, key.pem; key 0600) to use as
    /// `[[tls.certificates]]`; clients verify with `--cacert ca.pem`.
    Dev {
        /// DNS names or IP addresses on the leaf.
        #[arg(default_values_t = ["localhost".to_string(), "127.0.0.1".to_string()])]
        names: Vec<String>,
        #[arg(long, default_value = ".")]
        out: PathBuf,
    },
}

#[derive(clap::Args, Debug)]
struct Common {
    /// This front door's region (overrides server.region).
    #[arg(long)]
    region: Option<String>,
    #[arg(long)]
    http: Option<SocketAddr>,
    #[arg(long)]
    https: Option<SocketAddr>,
    #[arg(long)]
    admin: Option<SocketAddr>,
    /// File holding the admin bearer token.
    #[arg(long, conflicts_with = "admin_token")]
    admin_token_file: Option<PathBuf>,
    #[arg(long, env = "FRONTDOOR_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    /// etcd endpoints (comma-separated) for fleet mode, e.g. http://127.0.0.1:2379.
    #[arg(
        long,
        env = "FRONTDOOR_ETCD",
        value_delimiter = ',',
        requires = "fleet"
    )]
    etcd: Vec<String>,
    /// Fleet name: front doors with the same name share rollout state (and config).
    #[arg(long, env = "FRONTDOOR_FLEET")]
    fleet: Option<String>,
    /// This member's id in the fleet (default: host name and process id).
    #[arg(long)]
    member: Option<String>,
}

fn main() -> std::process::ExitCode {
    certs::install_crypto_provider();
    let cli = Cli::parse();
    if let Command::Check { config } = &cli.command {
        return check(config);
    }
    if let Command::Certs {
        command: CertsCommand::Dev { names, out },
    } = &cli.command
    {
        return match dev_certs(names, out) {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("frontdoor certs dev: {e:#}");
                std::process::ExitCode::FAILURE
            }
        };
    }
    init_logging();
    // One thread: tokio's current-thread scheduler (no work stealing, no cross-thread wakes);
    // otherwise a worker per CPU (or per --threads).
    let mut builder = match cli.threads {
        _ if cli.workers.is_some() => tokio::runtime::Builder::new_current_thread(),
        Some(1) => tokio::runtime::Builder::new_current_thread(),
        Some(n) => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(n.max(1));
            b
        }
        None => tokio::runtime::Builder::new_multi_thread(),
    };
    // Each thread's access log lines go to the log's batch when the thread parks.
    frontdoor::telemetry::log_hooks(&mut builder);
    let runtime = match builder.enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("frontdoor: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Run { config, common } => run(config, common, cli.workers).await,
            Command::Demo {
                http,
                https,
                admin,
                admin_token,
                state_dir,
            } => demo(http, https, admin, admin_token, state_dir).await,
            Command::Check { .. } | Command::Certs { .. } => Ok(()),
        }
    });
    // Drained already; do not wait on idle background tasks (health checks, DNS, resolver).
    runtime.shutdown_timeout(std::time::Duration::from_millis(100));
    frontdoor::telemetry::LogSink::global().flush();
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("frontdoor: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_env("FRONTDOOR_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    // Installed now: the access log writes to it directly (telemetry::AccessRecord).
    let sink = frontdoor::telemetry::LogSink::global();
    tracing_subscriber::fmt()
        .json()
        .flatten_event(true)
        .with_current_span(false)
        .with_span_list(false)
        .with_env_filter(filter)
        .with_writer(move || sink.line())
        .init();
}

fn dev_certs(names: &[String], out: &std::path::Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let ca = certs::dev::DevCa::new("frontdoor dev CA")?;
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let leaf = ca.issue(&refs)?;
    std::fs::write(out.join("ca.pem"), &ca.cert_pem)?;
    std::fs::write(out.join("cert.pem"), &leaf.cert_pem)?;
    certs::acme::write_private(&out.join("key.pem"), leaf.key_pem.as_bytes())
        .map_err(anyhow::Error::msg)?;
    println!(
        "wrote {dir}/ca.pem, {dir}/cert.pem, {dir}/key.pem for {}\n  [[tls.certificates]]\n  hosts = {:?}\n  cert = \"{dir}/cert.pem\"\n  key = \"{dir}/key.pem\"\n  clients: curl --cacert {dir}/ca.pem https://{}/",
        names.join(", "),
        names,
        names.first().map_or("localhost", String::as_str),
        dir = out.display()
    );
    Ok(())
}

fn check(path: &PathBuf) -> std::process::ExitCode {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("{}: {e}", path.display());
            return std::process::ExitCode::FAILURE;
        }
    };
    match routes::load(&text) {
        Ok(s) => {
            println!(
                "{}: ok — {} routes, {} clusters, {} endpoints, {} regions, {} cache rules, shared cache {}, hash {}",
                path.display(),
                s.routes.len(),
                s.clusters.len(),
                s.clusters.iter().map(|c| c.endpoints.len()).sum::<usize>(),
                s.regions.len(),
                s.cache.rules.len(),
                s.cache
                    .store
                    .map_or("off".to_string(), |l| format!("{} MiB", l.max_bytes >> 20)),
                s.hash
            );
            std::process::ExitCode::SUCCESS
        }
        Err(errors) => {
            eprintln!("{}: {} error(s)", path.display(), errors.0.len());
            for e in &errors.0 {
                eprintln!("  {e}");
            }
            std::process::ExitCode::FAILURE
        }
    }
}

fn read_token(common: &Common) -> anyhow::Result<String> {
    if let Some(path) = &common.admin_token_file {
        let t =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        return Ok(t.trim().to_string());
    }
    common
        .admin_token
        .clone()
        .filter(|t| !t.is_empty())
        .context("an admin token is required: --admin-token-file or FRONTDOOR_ADMIN_TOKEN")
}

async fn run(config: PathBuf, common: Common, workers: Option<usize>) -> anyhow::Result<()> {
    let token = read_token(&common)?;
    let fleet = match (&common.fleet, common.etcd.is_empty()) {
        (Some(name), false) => Some(frontdoor::fleet::FleetOptions {
            endpoints: common.etcd.clone(),
            name: name.clone(),
            member: common.member.clone().unwrap_or_else(|| {
                let host = std::fs::read_to_string("/etc/hostname").unwrap_or_default();
                format!("{}-{}", host.trim(), std::process::id())
            }),
        }),
        (Some(_), true) => anyhow::bail!("--fleet needs --etcd URL"),
        (None, _) => None,
    };
    let running = server::start(StartOptions {
        config: Some(ConfigSource::File(config)),
        region: common.region,
        http: common.http,
        https: common.https,
        admin: common.admin,
        admin_token: token,
        watch_interval: Some(Duration::from_secs(2)),
        fleet,
        workers: workers.unwrap_or(1),
        ..Default::default()
    })
    .await?;
    tracing::info!(http = ?running.http, https = ?running.https, admin = %running.admin, "frontdoor serving");
    serve_until_signal(running).await
}

async fn demo(
    http: SocketAddr,
    https: SocketAddr,
    admin: SocketAddr,
    token: Option<String>,
    state_dir: PathBuf,
) -> anyhow::Result<()> {
    let token = token.unwrap_or_else(|| {
        format!(
            "demo-{}",
            frontdoor::classify::new_request_id()
                .to_str()
                .unwrap_or("token")
        )
    });
    let snapshot =
        routes::load(DEMO_CONFIG).map_err(|e| anyhow::anyhow!("embedded demo config: {e}"))?;
    let origins = Arc::new(DemoOrigins::start(&snapshot).await?);

    let ca = certs::dev::DevCa::new("frontdoor demo CA")?;
    let leaf = ca.issue(&["localhost", "127.0.0.1"])?;
    std::fs::create_dir_all(&state_dir)
        .with_context(|| format!("creating {}", state_dir.display()))?;
    let ca_path = state_dir.join("ca.pem");
    std::fs::write(&ca_path, &ca.cert_pem)?;
    let key = Arc::new(leaf.certified_key().map_err(anyhow::Error::msg)?);
    let store = certs::CertStore::from_keys([(vec!["localhost".to_string()], key)], None, false)?;

    let running = server::start(StartOptions {
        config: Some(ConfigSource::Inline(DEMO_CONFIG.to_string())),
        http: Some(http),
        https: Some(https),
        admin: Some(admin),
        admin_token: token.clone(),
        demo: Some(origins),
        fallback_certs: Some(store),
        ..Default::default()
    })
    .await?;
    let (h, s, a) = (
        running.http.unwrap_or(http),
        running.https.unwrap_or(https),
        running.admin,
    );
    eprintln!(
        r#"
frontdoor demo is running.
  HTTP   http://{h}/        HTTPS  https://localhost:{sp}/   admin  http://{a}/
  admin token: {token}

The config (deploy/demo.toml, embedded):
{DEMO_CONFIG}
Try:
  curl -s -D- http://{h}/
  curl -s --http2-prior-knowledge http://{h}/canary
  curl -s -D- -H 'x-client-country: DE' http://{h}/     # EU user: served from europe-west1
  cargo run --bin proxyctl -- --admin http://{a} explain --country DE http://localhost/ai/chat
  cargo run --bin proxyctl -- --admin http://{a} shift 10%             # canary rollout of "app"
  cargo run --bin proxyctl -- --admin http://{a} demo fault --region us-central1 --version canary --error-rate 0.2
  cargo run --bin proxyctl -- --admin http://{a} events                # the automatic rollback
  curl -s --cacert {ca} https://localhost:{sp}/
  export FRONTDOOR_ADMIN_TOKEN={token}
  cargo run --bin proxyctl -- --admin http://{a} status
  cargo run --bin proxyctl -- --admin http://{a} demo fault --region europe-west1 --down   # EU requests: 503 residency
  curl -s -H "Authorization: Bearer {token}" http://{a}/metrics | grep frontdoor_requests

Ctrl-C (or SIGTERM) drains and stops.
"#,
        sp = s.port(),
        ca = ca_path.display(),
    );
    serve_until_signal(running).await
}

/// Serves until SIGTERM/SIGINT (drain, exit 0); SIGHUP reloads the config.
async fn serve_until_signal(running: server::Running) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => {
                match running.proxy.reload().await {
                    Ok(hash) => tracing::info!(%hash, "SIGHUP: config reloaded"),
                    Err(errors) => tracing::error!(?errors, "SIGHUP: config rejected; previous config keeps serving"),
                }
            }
        }
    }
    tracing::info!("shutting down: draining in-flight requests");
    let clean = running.shutdown().await;
    if clean {
        tracing::info!("drained; bye");
    } else {
        tracing::warn!("drain deadline passed; closing remaining connections");
    }
    Ok(())
}

#[cfg(test)]
#[allow(unsafe_code)]
mod tests {
    use std::alloc::{GlobalAlloc, Layout};

    use super::Allocator;

    /// Every block is as aligned as its layout asks, zeroed when asked, and keeps its bytes
    /// through a reallocation — for sizes on both sides of mimalloc's small-block limit and
    /// alignments either side of a word.
    #[test]
    fn blocks_are_aligned_zeroed_and_kept_as_asked() {
        for align in [1, 2, 4, 8, 16, 32, 64, 128, 4096] {
            for size in [1, 7, 8, 24, 100, 1023, 1024, 1120, 1504, 3280, 70_000] {
                let layout = Layout::from_size_align(size, align).expect("layout");
                // SAFETY: non-zero sizes; each block is freed once, with its layout.
                unsafe {
                    let p = Allocator.alloc(layout);
                    assert!(!p.is_null());
                    assert_eq!(p as usize % align, 0, "{size} bytes aligned to {align}");
                    std::ptr::write_bytes(p, 0xa5, size);
                    let q = Allocator.realloc(p, layout, size * 3);
                    assert!(!q.is_null());
                    assert_eq!(
                        q as usize % align,
                        0,
                        "{size} → {} aligned to {align}",
                        size * 3
                    );
                    assert!((0..size).all(|i| *q.add(i) == 0xa5), "kept through realloc");
                    Allocator.dealloc(q, Layout::from_size_align(size * 3, align).expect("layout"));
                    let z = Allocator.alloc_zeroed(layout);
                    assert_eq!(z as usize % align, 0);
                    assert!((0..size).all(|i| *z.add(i) == 0), "zeroed");
                    Allocator.dealloc(z, layout);
                }
            }
        }
    }
}
