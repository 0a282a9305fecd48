//! `loadtest`: drive realistic regional traffic at a front door and verify its promises.
//!
//!   loadtest run SCENARIO.toml [--proxy URL] [--rate N] [--duration 30s] [--report DIR]
//!   loadtest drill canary-rollback|residency-failover|reload-under-load|region-weights
//!
//! Exit status 0 only when every assertion holds.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;

// Same allocator as frontdoor: the generator must not be the bottleneck.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
use clap::{Parser, Subcommand};
use loadtest::drill::{self, DrillOptions};
use loadtest::engine::{self, Mix, Recorder, Target};
use loadtest::report::{Report, Verdict};
use loadtest::scenario::{self, Scenario};

#[derive(Parser, Debug)]
#[command(
    name = "loadtest",
    version,
    about = "Load-test a frontdoor and verify residency, splits and errors"
)]
struct Cli {
    /// The front door's proxy listener.
    #[arg(long, global = true, default_value = "http://127.0.0.1:8080")]
    proxy: String,
    /// Arrivals per second (open model); overrides the scenario.
    #[arg(long, global = true)]
    rate: Option<f64>,
    /// How long to run (a drill: each phase), e.g. 30s.
    #[arg(long, global = true, value_parser = scenario::duration)]
    duration: Option<Duration>,
    /// Write summary.json and report.html here.
    #[arg(long, global = true)]
    report: Option<PathBuf>,
    /// Worker threads (default: one per CPU). Match the cores you give it (e.g. under taskset).
    #[arg(long, global = true)]
    threads: Option<usize>,
    /// PEM CA to trust for an https:// --proxy (e.g. the demo's /tmp/frontdoor-demo/ca.pem).
    #[arg(long, global = true)]
    cacert: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a scenario file.
    Run { scenario: PathBuf },
    /// Run a built-in drill against a front door (the demo by default).
    Drill {
        /// canary-rollback, residency-failover, reload-under-load or region-weights.
        name: String,
        #[arg(long, default_value = "http://127.0.0.1:9901")]
        admin: String,
        /// Admin API that takes demo faults (`/demo/origins`), when not `--admin` (fleet.sh:
        /// the demo process hosts the origins).
        #[arg(long)]
        faults: Option<String>,
        #[arg(long, env = "FRONTDOOR_ADMIN_TOKEN", hide_env_values = true)]
        token: Option<String>,
        /// "http1" or "h2".
        #[arg(long, default_value = "http1")]
        protocol: String,
        /// The canary must be rolled back within this long (canary-rollback).
        #[arg(long, default_value = "10s", value_parser = scenario::duration)]
        rollback_within: Duration,
    },
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    // One thread: the current-thread scheduler; otherwise a worker per CPU (or per --threads).
    let mut builder = match cli.threads {
        Some(1) => tokio::runtime::Builder::new_current_thread(),
        Some(n) => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(n.max(1));
            b
        }
        None => tokio::runtime::Builder::new_multi_thread(),
    };
    let rt = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("loadtest: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => std::process::ExitCode::FAILURE,
        Err(e) => {
            eprintln!("loadtest: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}

/// Shows live rate, failures and p99 on a terminal; draws nothing elsewhere (CI).
fn progress(rec: Arc<Recorder>, done: Arc<AtomicBool>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let bar = indicatif::ProgressBar::new_spinner();
        bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
        let start = tokio::time::Instant::now();
        while !done.load(Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let s = rec.summary(start.elapsed());
            let p99 = s
                .timeline
                .iter()
                .rev()
                .find(|x| x.requests > 0)
                .map_or(0.0, |x| x.p99_ms);
            bar.set_message(format!(
                "{} req, {:.0}/s, failed {}, refused {}, leaks {}, p99 {:.1} ms",
                s.requests, s.rps, s.failed, s.refused, s.leaks, p99
            ));
            bar.tick();
        }
        bar.finish_and_clear();
    })
}

/// The TLS client config for an https:// proxy URL (ALPN by protocol), or None for http://.
fn tls_for(cli: &Cli, protocol: &str) -> anyhow::Result<Option<Arc<rustls::ClientConfig>>> {
    if !cli.proxy.starts_with("https://") {
        return Ok(None);
    }
    let path = cli
        .cacert
        .as_ref()
        .context("an https:// --proxy needs --cacert FILE (the CA that signed its certificate)")?;
    let pem = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let alpn: &[&[u8]] = if protocol == "h2" {
        &[b"h2"]
    } else {
        &[b"http/1.1"]
    };
    Ok(Some(
        loadtest::tls::client_config(&pem, alpn).map_err(anyhow::Error::msg)?,
    ))
}

async fn run(cli: Cli) -> anyhow::Result<bool> {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let report = match &cli.command {
        Command::Run { scenario } => {
            let text = std::fs::read_to_string(scenario)
                .with_context(|| format!("reading {}", scenario.display()))?;
            let s = Scenario::parse(&text)
                .map_err(|e| anyhow::anyhow!("{}: {e}", scenario.display()))?;
            let mix = Arc::new(Mix::new(&s).map_err(anyhow::Error::msg)?);
            let rec = Arc::new(Recorder::default());
            let done = Arc::new(AtomicBool::new(false));
            let bar = progress(Arc::clone(&rec), Arc::clone(&done));
            let model = s.model(cli.rate, cli.duration);
            let target = Target {
                base: cli.proxy.clone(),
                connections: s.concurrency,
            };
            let elapsed = engine::run(
                &model,
                mix,
                &target,
                engine::client_with(&s.protocol, tls_for(&cli, &s.protocol)?),
                Arc::clone(&rec),
                Arc::new(AtomicBool::new(false)),
            )
            .await;
            done.store(true, Ordering::Relaxed);
            let _ = bar.await;
            let summary = rec.summary(elapsed);
            let mut verdicts = vec![Verdict::check(
                "no residency leaks",
                summary.leaks == 0,
                format!("{} leaks {:?}", summary.leaks, summary.leak_examples),
            )];
            if let Some(max) = s.expect.max_error_rate {
                verdicts.push(Verdict::check(
                    "error rate",
                    summary.error_rate <= max,
                    format!(
                        "{:.3}% (max {:.3}%)",
                        summary.error_rate * 100.0,
                        max * 100.0
                    ),
                ));
            }
            if let Some(p) = &s.expect.max_p99 {
                let limit = scenario::duration(p)
                    .map_err(anyhow::Error::msg)?
                    .as_secs_f64()
                    * 1000.0;
                let seen = summary
                    .latency_ms
                    .iter()
                    .find(|(k, _)| k == "p99")
                    .map_or(0.0, |(_, v)| *v);
                verdicts.push(Verdict::check(
                    "p99 latency",
                    seen <= limit,
                    format!("{seen:.2} ms (max {limit:.0} ms)"),
                ));
            }
            if s.expect.sticky {
                verdicts.push(Verdict::check(
                    "sticky versions",
                    summary.users_with_version_change == 0,
                    format!(
                        "{} users saw more than one version",
                        summary.users_with_version_change
                    ),
                ));
            }
            Report {
                title: format!("scenario {}", scenario.display()),
                summary,
                verdicts,
                notes: vec![],
            }
        }
        Command::Drill {
            name,
            admin,
            faults,
            token,
            protocol,
            rollback_within,
        } => {
            let o = DrillOptions {
                proxy: cli.proxy.clone(),
                admin: admin.clone(),
                faults: faults.clone(),
                token: token.clone().unwrap_or_default(),
                rate: cli.rate.unwrap_or(200.0),
                duration: cli.duration.unwrap_or(Duration::from_secs(5)),
                protocol: protocol.clone(),
                rollback_within: *rollback_within,
                tls: tls_for(&cli, protocol)?,
            };
            drill::run(name, &o).await.map_err(anyhow::Error::msg)?
        }
    };
    print!("{}", report.text());
    if let Some(dir) = &cli.report {
        report
            .write(dir)
            .with_context(|| format!("writing the report to {}", dir.display()))?;
        println!("  report: {}", dir.join("report.html").display());
    }
    Ok(report.passed())
}
