//! `proxyctl`: the operator CLI. Talks to a front door's admin API.

use std::path::PathBuf;

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::{Parser, Subcommand};
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

#[derive(Parser, Debug)]
#[command(
    name = "proxyctl",
    version,
    about = "Operate a frontdoor through its admin API"
)]
struct Cli {
    /// Admin API base URL.
    #[arg(
        long,
        global = true,
        default_value = "http://127.0.0.1:9901",
        env = "FRONTDOOR_ADMIN"
    )]
    admin: String,
    /// Bearer token for the admin API.
    #[arg(
        long,
        global = true,
        env = "FRONTDOOR_ADMIN_TOKEN",
        hide_env_values = true
    )]
    token: Option<String>,
    /// Print the raw JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    /// Fleet mode: write rollout actions and purges straight to etcd (comma-separated
    /// endpoints); every member applies them. Gates are judged by the members, so `--force`
    /// is not needed (a red candidate is rolled back again by them).
    #[arg(
        long,
        global = true,
        env = "FRONTDOOR_ETCD",
        value_delimiter = ',',
        requires = "fleet"
    )]
    etcd: Vec<String>,
    /// The fleet name (with --etcd).
    #[arg(long, global = true, env = "FRONTDOOR_FLEET")]
    fleet: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum CertsAction {
    /// Re-read the certificate files now.
    Reload,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Config version, routes, clusters and endpoint health (`--fleet-members`: the fleet).
    Status {
        /// List the fleet's members: region, config revision, last seen, rollout weights.
        #[arg(long)]
        members: bool,
    },
    /// Ask the front door to re-read its config; prints every error if it is rejected.
    Reload,
    /// Drop stored responses from the shared cache: one URL (every variant, jurisdiction and
    /// version), every path under `--prefix` (optionally on one `--host`), or `--all`.
    Purge {
        url: Option<String>,
        #[arg(long, conflicts_with_all = ["url", "all"])]
        prefix: Option<String>,
        #[arg(long, requires = "prefix")]
        host: Option<String>,
        #[arg(long, conflicts_with = "url")]
        all: bool,
    },
    /// The shared cache: limits, entries and bytes held, header rules.
    Cache,
    /// Served certificates: names, expiry, source (file, ACME), next renewal;
    /// `certs reload` re-reads the certificate files (a broken one is refused, the old serves).
    Certs {
        #[command(subcommand)]
        action: Option<CertsAction>,
    },
    /// Explain how a request would be routed: route, jurisdiction and its source, allowed
    /// regions, chosen region (as if the classification headers came from a trusted proxy).
    Explain {
        url: String,
        /// Country code as a CDN would send it (x-client-country).
        #[arg(long)]
        country: Option<String>,
        #[arg(long)]
        jurisdiction: Option<String>,
        #[arg(long)]
        tenant: Option<String>,
        /// Client address, for GeoIP.
        #[arg(long)]
        client: Option<String>,
        /// The request's method, for routes with `methods` (default GET).
        #[arg(long, short = 'X')]
        method: Option<String>,
        /// A request header `name: value`, for routes with `match_headers` (repeatable).
        #[arg(long = "header", short = 'H')]
        headers: Vec<String>,
    },
    /// Move a rollout's candidate weight (e.g. `proxyctl shift 10%`). Refused while the gates
    /// are red unless `--force --reason "..."`.
    Shift {
        #[arg(value_parser = parse_percent)]
        weight: f64,
        #[command(flatten)]
        target: RolloutTarget,
        #[arg(long)]
        force: bool,
    },
    /// Send every user to the candidate (100%); the post-promotion watch still judges it.
    Promote {
        #[command(flatten)]
        target: RolloutTarget,
    },
    /// Send every user back to stable (0%); stays until an operator acts.
    Rollback {
        #[command(flatten)]
        target: RolloutTarget,
    },
    /// Stop automatic steps (breaches still roll back).
    Pause {
        #[command(flatten)]
        target: RolloutTarget,
    },
    /// Resume automatic steps (also clears a rollback).
    Resume {
        #[command(flatten)]
        target: RolloutTarget,
    },
    /// Rollout events: every shift, step, rollback with who, when and why.
    Events,
    /// Validate a config file locally (no front door needed).
    Check { config: PathBuf },
    /// Demo mode: inspect or inject faults into the demo origins.
    Demo {
        #[command(subcommand)]
        command: DemoCommand,
    },
}

/// Which rollout, and the audit fields.
#[derive(clap::Args, Debug)]
struct RolloutTarget {
    /// The route; optional when there is exactly one rollout.
    #[arg(long)]
    route: Option<String>,
    /// Why (recorded in events; required with --force).
    #[arg(long, default_value = "")]
    reason: String,
}

fn parse_percent(text: &str) -> Result<f64, String> {
    let v: f64 = text
        .trim()
        .trim_end_matches('%')
        .trim()
        .parse()
        .map_err(|_| format!("{text:?} is not a percentage like 10% or 0.5%"))?;
    if (0.0..=100.0).contains(&v) {
        Ok(v)
    } else {
        Err(format!("{text:?} must be between 0% and 100%"))
    }
}

#[derive(Subcommand, Debug)]
enum DemoCommand {
    /// List demo origins with their faults and request counts.
    Origins,
    /// Set a fault on the demo origin(s) of a region (and version); `--clear` removes it.
    Fault {
        /// Region of the origin(s); every region when omitted.
        #[arg(long, default_value = "*")]
        region: String,
        /// Version of the origin(s); every version in the region when omitted.
        #[arg(long)]
        version: Option<String>,
        /// Share of requests answered with 500 (0..1, or a percentage like 20%).
        #[arg(long, value_parser = parse_rate)]
        error_rate: Option<f64>,
        #[arg(long)]
        latency_ms: Option<u64>,
        /// Drop every connection and fail health checks.
        #[arg(long)]
        down: bool,
        /// Remove every fault.
        #[arg(long, conflicts_with_all = ["error_rate", "latency_ms", "down"])]
        clear: bool,
    },
}

fn parse_rate(text: &str) -> Result<f64, String> {
    let t = text.trim();
    let value = match t.strip_suffix('%') {
        Some(p) => p.trim().parse::<f64>().map(|v| v / 100.0),
        None => t.parse::<f64>(),
    }
    .map_err(|_| format!("{text:?} is not a rate like 0.2 or 20%"))?;
    if (0.0..=1.0).contains(&value) {
        Ok(value)
    } else {
        Err(format!("{text:?} must be between 0 and 1 (0%..100%)"))
    }
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("proxyctl: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("proxyctl: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<std::process::ExitCode> {
    let ok = std::process::ExitCode::SUCCESS;
    match &cli.command {
        Command::Check { config } => {
            let text = std::fs::read_to_string(config)
                .with_context(|| format!("reading {}", config.display()))?;
            return Ok(match routes::load(&text) {
                Ok(s) => {
                    println!(
                        "{}: ok — {} routes, {} clusters, hash {}",
                        config.display(),
                        s.routes.len(),
                        s.clusters.len(),
                        s.hash
                    );
                    ok
                }
                Err(errors) => {
                    eprintln!("{}: {} error(s)", config.display(), errors.0.len());
                    for e in &errors.0 {
                        eprintln!("  {e}");
                    }
                    std::process::ExitCode::FAILURE
                }
            });
        }
        Command::Status { members: true } => {
            let v = call(&cli, Method::GET, "/status", None).await?;
            let f = &v["fleet"];
            if cli.json {
                println!("{}", serde_json::to_string_pretty(f)?);
            } else if f.is_null() {
                println!("not in fleet mode");
            } else {
                println!(
                    "fleet {}  member {}  state {}  pending writes {}",
                    s(&f["name"]),
                    s(&f["member"]),
                    s(&f["state"]),
                    s(&f["pending_writes"])
                );
                if let Some(e) = f["last_error"].as_str() {
                    println!("  last error: {e}");
                }
                for e in f["config_errors"].as_array().into_iter().flatten() {
                    println!("  fleet config rejected: {}", s(e));
                }
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_millis() as f64)
                    .unwrap_or(0.0);
                let mut rows = vec![vec![
                    "MEMBER".into(),
                    "REGION".into(),
                    "VERSION".into(),
                    "CONFIG".into(),
                    "LAST SEEN".into(),
                    "ROLLOUTS".into(),
                ]];
                for m in f["members"].as_array().into_iter().flatten() {
                    let ago = m["last_seen_unix_ms"]
                        .as_f64()
                        .map_or("-".into(), |t| format!("{:.1}s ago", (now - t) / 1000.0));
                    let weights = m["rollouts"]
                        .as_object()
                        .map(|o| {
                            o.iter()
                                .map(|(k, w)| format!("{k}={}%", s(w)))
                                .collect::<Vec<_>>()
                                .join(" ")
                        })
                        .unwrap_or_default();
                    rows.push(vec![
                        s(&m["id"]),
                        s(&m["region"]),
                        s(&m["version"]),
                        s(&m["config_hash"]),
                        ago,
                        weights,
                    ]);
                }
                print_table(&rows);
            }
        }
        Command::Status { members: false } => {
            let v = call(&cli, Method::GET, "/status", None).await?;
            if cli.json {
                println!("{}", serde_json::to_string_pretty(&v)?)
            } else {
                print_status(&v)
            }
        }
        Command::Reload => {
            let v = call(&cli, Method::POST, "/reload", None).await?;
            if cli.json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else if v["ok"] == true {
                println!("reloaded: config {}", v["hash"].as_str().unwrap_or("?"));
            } else {
                eprintln!(
                    "reload rejected; still serving config {}",
                    v["serving"].as_str().unwrap_or("?")
                );
                for e in v["errors"].as_array().into_iter().flatten() {
                    eprintln!("  {}", e.as_str().unwrap_or_default());
                }
                return Ok(std::process::ExitCode::FAILURE);
            }
        }
        Command::Purge {
            url,
            prefix,
            host,
            all,
        } => {
            let purge = frontdoor::cache::Purge {
                url: url.clone(),
                prefix: prefix.clone(),
                host: host.clone(),
                all: *all,
            };
            if let Err(e) = purge.validate() {
                eprintln!("proxyctl purge: {e}");
                return Ok(std::process::ExitCode::from(2));
            }
            if !cli.etcd.is_empty() {
                let fleet = cli.fleet.as_deref().unwrap_or_default();
                return Ok(
                    match frontdoor::fleet::purge_in_etcd(&cli.etcd, fleet, &purge).await {
                        Ok(()) => {
                            println!(
                                "purge written to etcd: every member of fleet {fleet} applies it"
                            );
                            ok
                        }
                        Err(e) => {
                            eprintln!("purge failed: {e}");
                            std::process::ExitCode::FAILURE
                        }
                    },
                );
            }
            let body = serde_json::to_value(&purge)?;
            let v = call(&cli, Method::POST, "/cache/purge", Some(body)).await?;
            if cli.json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else if let Some(n) = v["purged_keys"].as_u64() {
                println!("purged: {n} key(s), every variant");
            } else {
                println!("purged");
            }
        }
        Command::Certs {
            action: Some(CertsAction::Reload),
        } => {
            let v = call_allowing(
                &cli,
                Method::POST,
                "/certs/reload",
                None,
                &[StatusCode::UNPROCESSABLE_ENTITY],
            )
            .await?;
            if cli.json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else if v["ok"] == true {
                println!("certificates reloaded: {} served", v["certificates"]);
            } else {
                eprintln!("certificates not reloaded; the old ones keep serving");
                for e in v["errors"].as_array().into_iter().flatten() {
                    eprintln!("  {}", e.as_str().unwrap_or_default());
                }
                return Ok(std::process::ExitCode::FAILURE);
            }
        }
        Command::Certs { action: None } => {
            let v = call(&cli, Method::GET, "/certs", None).await?;
            if cli.json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else if v["tls"] != true {
                println!("no TLS listener");
            } else {
                let date = |secs: &Value| {
                    secs.as_i64().map_or("-".to_string(), |t| {
                        let days = t.div_euclid(86_400);
                        let (y, m, d) = frontdoor::clock::civil_from_days(days);
                        format!("{y:04}-{m:02}-{d:02}")
                    })
                };
                let mut rows = vec![vec![
                    "NAMES".into(),
                    "ISSUER".into(),
                    "NOT_AFTER".into(),
                    "DAYS_LEFT".into(),
                    "SOURCE".into(),
                    "NEXT_RENEWAL".into(),
                ]];
                for c in v["certificates"].as_array().into_iter().flatten() {
                    let names: Vec<&str> = c["names"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|n| n.as_str())
                        .collect();
                    rows.push(vec![
                        names.join(","),
                        c["issuer"].as_str().unwrap_or("-").to_string(),
                        date(&c["not_after_unix"]),
                        c["days_left"].to_string(),
                        s(&c["source"]),
                        date(&c["next_renewal_unix"]),
                    ]);
                }
                print_table(&rows);
                if let Some(a) = v["acme"].as_object() {
                    println!("acme: {} for {}", s(&a["directory"]), a["hosts"]);
                }
            }
        }
        Command::Cache => {
            let v = call(&cli, Method::GET, "/cache", None).await?;
            if cli.json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                if v["enabled"] == true {
                    println!(
                        "shared cache: on, {} entries, {} of {} bytes (objects up to {} bytes)",
                        v["entries"], v["bytes"], v["max_bytes"], v["max_object_bytes"]
                    );
                } else {
                    println!("shared cache: off (header rules only)");
                }
                let mut rows = vec![vec!["RULE".into(), "PATHS".into(), "NO_STORE".into()]];
                for r in v["rules"].as_array().into_iter().flatten() {
                    let paths: Vec<&str> = r["paths"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|p| p.as_str())
                        .collect();
                    rows.push(vec![
                        r["name"].as_str().unwrap_or_default().to_string(),
                        paths.join(" "),
                        r["no_store"].to_string(),
                    ]);
                }
                print_table(&rows);
            }
        }
        Command::Shift {
            weight,
            target,
            force,
        } => {
            let body = serde_json::json!({ "weight": weight, "force": force, "reason": target.reason, "actor": actor() });
            return rollout_call(&cli, target, "shift", body).await;
        }
        Command::Promote { target } => {
            return rollout_call(
                &cli,
                target,
                "promote",
                serde_json::json!({ "reason": target.reason, "actor": actor() }),
            )
            .await;
        }
        Command::Rollback { target } => {
            return rollout_call(
                &cli,
                target,
                "rollback",
                serde_json::json!({ "reason": target.reason, "actor": actor() }),
            )
            .await;
        }
        Command::Pause { target } => {
            return rollout_call(
                &cli,
                target,
                "pause",
                serde_json::json!({ "reason": target.reason, "actor": actor() }),
            )
            .await;
        }
        Command::Resume { target } => {
            return rollout_call(
                &cli,
                target,
                "resume",
                serde_json::json!({ "reason": target.reason, "actor": actor() }),
            )
            .await;
        }
        Command::Events => {
            let v = call(&cli, Method::GET, "/events", None).await?;
            if cli.json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                let mut rows = vec![vec![
                    "AT (unix ms)".into(),
                    "ROUTE".into(),
                    "ACTION".into(),
                    "WEIGHT".into(),
                    "ACTOR".into(),
                    "REASON".into(),
                ]];
                for e in v.as_array().into_iter().flatten() {
                    rows.push(vec![
                        s(&e["at_unix_ms"]),
                        s(&e["route"]),
                        s(&e["action"]),
                        format!("{}% → {}%", s(&e["weight_before"]), s(&e["weight_after"])),
                        s(&e["actor"]),
                        s(&e["reason"]),
                    ]);
                }
                print_table(&rows);
            }
        }
        Command::Explain {
            url,
            country,
            jurisdiction,
            tenant,
            client,
            method,
            headers,
        } => {
            let mut query = format!("url={}", percent_encode(url));
            for (k, v) in [
                ("country", country),
                ("jurisdiction", jurisdiction),
                ("tenant", tenant),
                ("client", client),
                ("method", method),
            ] {
                if let Some(v) = v {
                    query.push_str(&format!("&{k}={}", percent_encode(v)));
                }
            }
            for h in headers {
                query.push_str(&format!("&header={}", percent_encode(h)));
            }
            let v = call(&cli, Method::GET, &format!("/explain?{query}"), None).await?;
            print!("{}", v.as_str().unwrap_or_default());
        }
        Command::Demo {
            command: DemoCommand::Origins,
        } => {
            let v = call(&cli, Method::GET, "/demo/origins", None).await?;
            if cli.json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                let mut rows = vec![vec![
                    "ORIGIN".into(),
                    "ADDRESS".into(),
                    "ERROR_RATE".into(),
                    "LATENCY_MS".into(),
                    "DOWN".into(),
                    "REQUESTS".into(),
                ]];
                for (k, o) in v.as_object().into_iter().flatten() {
                    rows.push(vec![
                        k.clone(),
                        s(&o["address"]),
                        s(&o["fault"]["error_rate"]),
                        s(&o["fault"]["latency_ms"]),
                        s(&o["fault"]["down"]),
                        s(&o["requests"]),
                    ]);
                }
                print_table(&rows);
            }
        }
        Command::Demo {
            command:
                DemoCommand::Fault {
                    region,
                    version,
                    error_rate,
                    latency_ms,
                    down,
                    clear,
                },
        } => {
            let body = if *clear {
                serde_json::json!({})
            } else {
                serde_json::json!({ "error_rate": error_rate.unwrap_or(0.0), "latency_ms": latency_ms.unwrap_or(0), "down": down })
            };
            let path = match version {
                Some(v) => format!("/demo/origins/{}/{v}", percent_encode(region)),
                None => format!("/demo/origins/{}", percent_encode(region)),
            };
            let v = call(&cli, Method::PUT, &path, Some(body)).await?;
            let version = version.as_deref().unwrap_or("*");
            if cli.json {
                println!("{}", serde_json::to_string_pretty(&v)?)
            } else {
                println!("{region}/{version}: {}", v["fault"])
            }
        }
    }
    Ok(ok)
}

fn s(v: &Value) -> String {
    match v {
        Value::String(t) => t.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

async fn call(cli: &Cli, method: Method, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
    call_allowing(cli, method, path, body, &[StatusCode::UNPROCESSABLE_ENTITY]).await
}

/// Like [`call`], but statuses in `answers` return their JSON body instead of failing.
async fn call_allowing(
    cli: &Cli,
    method: Method,
    path: &str,
    body: Option<Value>,
    answers: &[StatusCode],
) -> anyhow::Result<Value> {
    let token = cli
        .token
        .clone()
        .filter(|t| !t.is_empty())
        .context("no admin token: pass --token or set FRONTDOOR_ADMIN_TOKEN")?;
    let url = format!("{}{}", cli.admin.trim_end_matches('/'), path);
    let uri: http::Uri = url
        .parse()
        .with_context(|| format!("invalid admin URL {:?}", cli.admin))?;
    if uri.scheme_str() != Some("http") {
        bail!("admin URL must be http://host:port (got {:?})", cli.admin);
    }
    let bytes = body.map(|b| Bytes::from(b.to_string())).unwrap_or_default();
    let req = Request::builder()
        .method(method)
        .uri(uri)
        .header(http::header::AUTHORIZATION, format!("Bearer {token}"))
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(bytes))?;
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let resp = tokio::time::timeout(std::time::Duration::from_secs(30), client.request(req))
        .await
        .map_err(|_| anyhow::anyhow!("{}: no answer within 30 s", cli.admin))?
        .map_err(|e| anyhow::anyhow!("cannot reach the admin API at {}: {e}", cli.admin))?;
    let status = resp.status();
    let body = resp
        .into_body()
        .collect()
        .await
        .context("reading the answer")?
        .to_bytes();
    let value: Value = serde_json::from_slice(&body)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into_owned()));
    match status {
        StatusCode::UNAUTHORIZED => bail!("401 unauthorized: the admin token was refused"),
        s if s.is_success() || answers.contains(&s) => Ok(value),
        other => bail!(
            "{other}: {}",
            value
                .get("error")
                .map(s)
                .unwrap_or_else(|| value.to_string())
        ),
    }
}

fn print_status(v: &Value) {
    let c = &v["config"];
    println!(
        "config {}   region {}   reloads ok {} rejected {}",
        s(&c["hash"]),
        s(&v["region"]),
        s(&c["reloads_ok"]),
        s(&c["reloads_rejected"])
    );
    for e in c["last_errors"].as_array().into_iter().flatten() {
        println!("  last rejected reload: {}", s(e));
    }
    println!();
    let mut rows = vec![vec![
        "ROUTE".into(),
        "HOSTS".into(),
        "PREFIX".into(),
        "CLUSTER".into(),
        "VERSION".into(),
    ]];
    for r in v["routes"].as_array().into_iter().flatten() {
        let hosts = r["hosts"]
            .as_array()
            .map(|h| h.iter().map(s).collect::<Vec<_>>().join(","))
            .filter(|h| !h.is_empty());
        rows.push(vec![
            s(&r["name"]),
            hosts.unwrap_or_else(|| "*".into()),
            s(&r["path_prefix"]),
            s(&r["cluster"]),
            s(&r["version"]),
        ]);
    }
    print_table(&rows);
    println!();
    let mut rows = vec![vec![
        "CLUSTER".into(),
        "ENDPOINT".into(),
        "REGION".into(),
        "VERSION".into(),
        "HEALTH".into(),
        "IN_FLIGHT".into(),
        "SLOTS".into(),
        "QUEUED".into(),
    ]];
    for cl in v["clusters"].as_array().into_iter().flatten() {
        // The queue is the cluster's: shown on its first row.
        let mut queued = Some(s(&cl["queued"]));
        for m in cl["members"].as_array().into_iter().flatten() {
            let health = if m["healthy"] == true {
                "healthy"
            } else if m["ejected"] == true {
                "ejected"
            } else {
                "unhealthy"
            };
            rows.push(vec![
                s(&cl["name"]),
                s(&m["address"]),
                s(&m["region"]),
                s(&m["version"]),
                health.into(),
                s(&m["in_flight"]),
                match m["slots"].as_object() {
                    Some(sl) => format!("{}/{}", s(&sl["taken"]), s(&sl["cap"])),
                    None => "-".into(),
                },
                queued.take().unwrap_or_default(),
            ]);
        }
    }
    print_table(&rows);
    let rollouts = v["rollouts"].as_array().cloned().unwrap_or_default();
    if !rollouts.is_empty() {
        println!();
        let mut rows = vec![vec![
            "ROLLOUT".into(),
            "PHASE".into(),
            "WEIGHT".into(),
            "GATE".into(),
            "VERSION".into(),
            "RPS".into(),
            "ERRORS".into(),
            "P95".into(),
            "REQUESTS".into(),
        ]];
        let pct = |x: &Value| {
            x.as_f64()
                .map_or("-".into(), |f| format!("{:.1}%", f * 100.0))
        };
        let ms = |x: &Value| x.as_f64().map_or("-".into(), |f| format!("{f:.0}ms"));
        for r in &rollouts {
            let gate = &r["gate"];
            for (label, key, name) in [
                ("stable", "stable", &r["stable"]),
                ("candidate", "candidate", &r["candidate"]),
            ] {
                let st = &gate[key];
                let first = label == "stable";
                rows.push(vec![
                    if first { s(&r["route"]) } else { String::new() },
                    if first { s(&r["phase"]) } else { String::new() },
                    if first {
                        format!("{}%", s(&r["weight"]))
                    } else {
                        String::new()
                    },
                    if first {
                        s(&gate["state"])
                    } else {
                        String::new()
                    },
                    match r["mirror_percent"].as_f64() {
                        Some(m) if m > 0.0 && !first => {
                            format!("{label} ({}; + copies of {m}% of stable's)", s(name))
                        }
                        _ => format!("{label} ({})", s(name)),
                    },
                    st["rps"].as_f64().map_or("-".into(), |f| format!("{f:.1}")),
                    pct(&st["error_rate"]),
                    ms(&st["p95_ms"]),
                    s(&st["requests"]),
                ]);
            }
            for rv in gate["regions"].as_array().into_iter().flatten() {
                let st = &rv["stats"];
                rows.push(vec![
                    String::new(),
                    String::new(),
                    String::new(),
                    String::new(),
                    format!("  {} in {}", s(&rv["version"]), s(&rv["region"])),
                    st["rps"].as_f64().map_or("-".into(), |f| format!("{f:.1}")),
                    pct(&st["error_rate"]),
                    ms(&st["p95_ms"]),
                    s(&st["requests"]),
                ]);
            }
            if let Some(d) = gate["detail"].as_str().filter(|d| !d.is_empty()) {
                println!("  {}: {d}", s(&r["route"]));
            }
            if let Some(reason) = r["reason"].as_str() {
                println!("  {} rolled back: {reason}", s(&r["route"]));
            }
        }
        print_table(&rows);
    }
}

fn print_table(rows: &[Vec<String>]) {
    let cols = rows.first().map_or(0, Vec::len);
    let widths: Vec<usize> = (0..cols)
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        println!("{}", line.join("  ").trim_end());
    }
}

/// Encodes everything but unreserved characters, for a query component.
fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn actor() -> String {
    std::env::var("USER")
        .ok()
        .filter(|u| !u.is_empty())
        .map_or_else(|| "proxyctl".to_string(), |u| format!("{u} (proxyctl)"))
}

/// Fleet mode: the action goes straight to etcd (compare-and-swap on the rollout's record);
/// every member's watch applies it, and each member's gates keep judging the candidate.
async fn rollout_in_etcd(
    cli: &Cli,
    target: &RolloutTarget,
    verb: &str,
    body: &Value,
) -> anyhow::Result<std::process::ExitCode> {
    use frontdoor::rollout::Phase;
    let (weight, phase) = match verb {
        "shift" => (body["weight"].as_f64(), Phase::Progressing),
        "promote" => (None, Phase::Promoted),
        "rollback" => (None, Phase::RolledBack),
        "pause" => (None, Phase::Paused),
        _ => (None, Phase::Progressing),
    };
    let fleet = cli.fleet.as_deref().unwrap_or_default();
    let reason = if target.reason.is_empty() {
        "proxyctl"
    } else {
        target.reason.as_str()
    };
    match frontdoor::fleet::act_in_etcd(
        &cli.etcd,
        fleet,
        target.route.as_deref(),
        weight,
        phase,
        &actor(),
        reason,
    )
    .await
    {
        Ok((route, record)) => {
            if cli.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(
                        &serde_json::json!({ "route": route, "record": record })
                    )?
                );
            } else {
                println!(
                    "{route}: {verb} → {}% (written to etcd; every member of fleet {fleet} applies it)",
                    record.weight
                );
            }
            Ok(std::process::ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("{verb} failed: {e}");
            Ok(std::process::ExitCode::FAILURE)
        }
    }
}

async fn rollout_call(
    cli: &Cli,
    target: &RolloutTarget,
    verb: &str,
    body: Value,
) -> anyhow::Result<std::process::ExitCode> {
    if !cli.etcd.is_empty() {
        return rollout_in_etcd(cli, target, verb, &body).await;
    }
    let route = target.route.as_deref().unwrap_or("_");
    let path = format!("/rollouts/{}/{verb}", percent_encode(route));
    let v = call_allowing(
        cli,
        Method::POST,
        &path,
        Some(body),
        &[
            StatusCode::CONFLICT,
            StatusCode::BAD_REQUEST,
            StatusCode::NOT_FOUND,
        ],
    )
    .await?;
    if let Some(err) = v.get("error") {
        eprintln!("{verb} refused: {}", s(err));
        return Ok(std::process::ExitCode::FAILURE);
    }
    if cli.json {
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!(
            "{}: {} {}% → {}%",
            s(&v["route"]),
            verb,
            s(&v["weight_before"]),
            s(&v["weight_after"])
        );
    }
    Ok(std::process::ExitCode::SUCCESS)
}
