//! Drills: scripted scenarios against a running front door (the demo by default) that change
//! something — a fault, a shift, reloads — while traffic flows, and assert the outcome.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use serde_json::Value;
use tokio::time::Instant;

use crate::engine::{self, Mix, Recorder, Target};
use crate::report::{Report, Verdict};
use crate::scenario::{Model, Scenario};

/// The drills `loadtest drill NAME` knows.
pub const DRILLS: [&str; 4] = [
    "canary-rollback",
    "residency-failover",
    "reload-under-load",
    "region-weights",
];

/// Where the front door is and how fast to push.
#[derive(Debug, Clone)]
pub struct DrillOptions {
    pub proxy: String,
    pub admin: String,
    /// The admin API that takes `/demo/origins` faults (the demo's; default: `admin`).
    pub faults: Option<String>,
    pub token: String,
    pub rate: f64,
    /// Length of each phase of the drill.
    pub duration: Duration,
    pub protocol: String,
    /// Seconds within which the canary must be rolled back.
    pub rollback_within: Duration,
    /// TLS to the proxy (an https:// `proxy`).
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

/// A small admin API client.
#[derive(Debug, Clone)]
pub struct Admin {
    base: String,
    token: String,
    client: engine::HttpClient,
}

impl Admin {
    pub fn new(base: &str, token: &str) -> Admin {
        Admin {
            base: base.trim_end_matches('/').to_string(),
            token: token.to_string(),
            client: engine::client("http1"),
        }
    }

    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<(u16, Value), String> {
        let req = Request::builder()
            .method(method)
            .uri(format!("{}{}", self.base, path))
            .header(
                http::header::AUTHORIZATION,
                format!("Bearer {}", self.token),
            )
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(
                body.map(|b| Bytes::from(b.to_string())).unwrap_or_default(),
            ))
            .map_err(|e| e.to_string())?;
        let resp = tokio::time::timeout(Duration::from_secs(30), self.client.request(req))
            .await
            .map_err(|_| format!("admin API {} did not answer", self.base))?
            .map_err(|e| format!("admin API {}: {e}", self.base))?;
        let status = resp.status().as_u16();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        if status == 401 {
            return Err(
                "admin API: 401 unauthorized (set FRONTDOOR_ADMIN_TOKEN or --token)".into(),
            );
        }
        Ok((
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        ))
    }

    async fn ok(&self, method: Method, path: &str, body: Option<Value>) -> Result<Value, String> {
        match self.call(method, path, body).await? {
            (s, v) if (200..300).contains(&s) => Ok(v),
            (s, v) => Err(format!("{path}: {s} {v}")),
        }
    }
}

fn scenario(countries: &str, path: &str, protocol: &str) -> Result<Scenario, String> {
    Scenario::parse(&format!(
        "users = 20000\nprotocol = \"{protocol}\"\n[countries]\n{countries}\n[[paths]]\npath = \"{path}\"\n[expect.regions]\nDE = [\"europe-west1\"]\nFR = [\"europe-west1\"]\n"
    ))
}

/// The recorder, the stop flag and the task of a background load run.
type Background = (
    Arc<Recorder>,
    Arc<AtomicBool>,
    tokio::task::JoinHandle<Duration>,
);

/// Runs load in the background; returns the recorder and a handle with the elapsed time.
fn background(o: &DrillOptions, s: &Scenario, total: Duration) -> Result<Background, String> {
    let mix = Arc::new(Mix::new(s)?);
    let rec = Arc::new(Recorder::default());
    let stop = Arc::new(AtomicBool::new(false));
    let model = Model::Open(vec![(o.rate, total)]);
    let target = Target {
        base: o.proxy.clone(),
        connections: None,
    };
    let client = engine::client_with(&o.protocol, o.tls.clone());
    let (r, st) = (Arc::clone(&rec), Arc::clone(&stop));
    let handle =
        tokio::spawn(async move { engine::run(&model, mix, &target, client, r, st).await });
    Ok((rec, stop, handle))
}

/// Runs a drill by name.
pub async fn run(name: &str, o: &DrillOptions) -> Result<Report, String> {
    let admin = Admin::new(&o.admin, &o.token);
    let faults = Admin::new(o.faults.as_deref().unwrap_or(&o.admin), &o.token);
    match name {
        "region-weights" => region_weights(o).await,
        "residency-failover" => residency_failover(o, &faults).await,
        "canary-rollback" => canary_rollback(o, &admin, &faults).await,
        "reload-under-load" => reload_under_load(o, &admin).await,
        other => Err(format!(
            "unknown drill {other:?}; drills: {}",
            DRILLS.join(", ")
        )),
    }
}

/// The demo's `/ai` route spreads unrestricted users 70/30 over us-central1 and
/// europe-west1; EU users stay in the EU.
async fn region_weights(o: &DrillOptions) -> Result<Report, String> {
    let s = scenario("US = 60\nDE = 30\nSG = 10", "/ai/chat", &o.protocol)?;
    let (rec, _stop, handle) = background(o, &s, o.duration)?;
    let elapsed = handle.await.map_err(|e| e.to_string())?;
    let summary = rec.summary(elapsed);
    let n = |k: &str| summary.by_country_region.get(k).copied().unwrap_or(0) as f64;
    let non_eu =
        n("US→us-central1") + n("SG→us-central1") + n("US→europe-west1") + n("SG→europe-west1");
    let us_share = if non_eu > 0.0 {
        (n("US→us-central1") + n("SG→us-central1")) / non_eu * 100.0
    } else {
        0.0
    };
    let eu_elsewhere = n("DE→us-central1") + n("DE→asia-southeast1");
    let verdicts = vec![
        Verdict::check(
            "no residency leaks",
            summary.leaks == 0,
            format!("{} leaks", summary.leaks),
        ),
        Verdict::check(
            "EU users served in europe-west1",
            n("DE→europe-west1") > 0.0 && eu_elsewhere == 0.0,
            format!(
                "{} in europe-west1, {eu_elsewhere} elsewhere",
                n("DE→europe-west1")
            ),
        ),
        Verdict::check(
            "70/30 split for the rest (±5 points)",
            (us_share - 70.0).abs() <= 5.0,
            format!("us-central1 {us_share:.1}% of {non_eu} non-EU requests"),
        ),
        Verdict::check(
            "no failures",
            summary.failed == 0,
            format!("{} failed", summary.failed),
        ),
    ];
    Ok(Report {
        title: "drill: region-weights".into(),
        summary,
        verdicts,
        notes: vec![],
    })
}

/// Takes the EU down under load: EU users get 503 refusals (never another region), others
/// are unaffected; then brings it back and times the recovery.
async fn residency_failover(o: &DrillOptions, faults: &Admin) -> Result<Report, String> {
    let admin = faults;
    let s = scenario("US = 60\nDE = 30\nSG = 10", "/api/profile", &o.protocol)?;
    let phase = o.duration;
    let (rec, _stop, handle) = background(o, &s, phase * 3)?;
    let mut notes = Vec::new();
    tokio::time::sleep(phase).await;
    admin
        .ok(
            Method::PUT,
            "/demo/origins/europe-west1",
            Some(serde_json::json!({ "down": true })),
        )
        .await?;
    notes.push(format!("t={:.0}s: europe-west1 down", phase.as_secs_f64()));
    tokio::time::sleep(phase).await;
    let refused_while_down = rec.summary(phase).refused;
    admin
        .ok(
            Method::PUT,
            "/demo/origins/europe-west1",
            Some(serde_json::json!({})),
        )
        .await?;
    let back = Instant::now();
    notes.push(format!(
        "t={:.0}s: europe-west1 back",
        2.0 * phase.as_secs_f64()
    ));
    // Time until an EU user is served from the EU again.
    let client = engine::client_with("http1", o.tls.clone());
    let mut recovered = None;
    while back.elapsed() < phase * 2 {
        let req = Request::get(format!("{}/", o.proxy.trim_end_matches('/')))
            .header("x-client-country", "DE")
            .body(Full::default())
            .map_err(|e| e.to_string())?;
        if let Ok(Ok(r)) = tokio::time::timeout(Duration::from_secs(5), client.request(req)).await
            && r.status() == 200
            && r.headers()
                .get("x-served-region")
                .is_some_and(|v| v == "europe-west1")
        {
            recovered = Some(back.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let elapsed = handle.await.map_err(|e| e.to_string())?;
    let summary = rec.summary(elapsed);
    let us_failed = summary.failed_by_country.get("US").copied().unwrap_or(0);
    let verdicts = vec![
        Verdict::check(
            "no residency leaks",
            summary.leaks == 0,
            format!("{} leaks {:?}", summary.leaks, summary.leak_examples),
        ),
        Verdict::check(
            "EU users refused with the residency header while the EU is down",
            refused_while_down > 0,
            format!("{refused_while_down} refusals"),
        ),
        Verdict::check(
            "US users unaffected",
            us_failed == 0,
            format!("{us_failed} US requests failed"),
        ),
        Verdict::check(
            "EU served again after recovery",
            recovered.is_some(),
            recovered.map_or("never within the drill".into(), |d| {
                format!("after {:.1}s", d.as_secs_f64())
            }),
        ),
    ];
    Ok(Report {
        title: "drill: residency-failover".into(),
        summary,
        verdicts,
        notes,
    })
}

/// Shifts the canary to 10%, injects 20% errors on it, and times the automatic rollback.
async fn canary_rollback(
    o: &DrillOptions,
    admin: &Admin,
    faults: &Admin,
) -> Result<Report, String> {
    // A signed-in page on the rolled-out route: never cached, so every request is judged.
    let s = scenario("US = 100", "/account/checkout", &o.protocol)?;
    admin.ok(Method::POST, "/rollouts/_/shift", Some(serde_json::json!({ "weight": 10, "force": true, "reason": "canary-rollback drill", "actor": "loadtest" }))).await?;
    let (rec, stop, handle) = background(o, &s, o.rollback_within + o.duration * 2)?;
    tokio::time::sleep(o.duration).await;
    faults
        .ok(
            Method::PUT,
            "/demo/origins/us-central1/canary",
            Some(serde_json::json!({ "error_rate": 0.2 })),
        )
        .await?;
    let injected = Instant::now();
    let mut rolled_back = None;
    let mut reason = String::new();
    while injected.elapsed() < o.rollback_within + o.duration {
        let (_, v) = admin.call(Method::GET, "/rollouts", None).await?;
        if let Some(r) = v.as_array().and_then(|a| a.first())
            && r["phase"] == "rolled_back"
        {
            rolled_back = Some(injected.elapsed());
            reason = r["reason"].as_str().unwrap_or_default().to_string();
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A little traffic after the rollback, then stop.
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let elapsed = handle.await.map_err(|e| e.to_string())?;
    faults
        .ok(
            Method::PUT,
            "/demo/origins/us-central1/canary",
            Some(serde_json::json!({})),
        )
        .await?;
    let summary = rec.summary(elapsed);
    let hurt = summary
        .users_with_failures_by_version
        .get("canary")
        .copied()
        .unwrap_or(0);
    let verdicts = vec![Verdict::check(
        &format!("rolled back within {}s", o.rollback_within.as_secs()),
        rolled_back.is_some_and(|d| d <= o.rollback_within),
        rolled_back.map_or("no rollback".into(), |d| {
            format!("after {:.2}s: {reason}", d.as_secs_f64())
        }),
    )];
    let notes = vec![format!(
        "{hurt} distinct users saw an error from the canary before the rollback"
    )];
    Ok(Report {
        title: "drill: canary-rollback".into(),
        summary,
        verdicts,
        notes,
    })
}

/// 100 config reloads while traffic flows: no request may fail.
async fn reload_under_load(o: &DrillOptions, admin: &Admin) -> Result<Report, String> {
    let s = scenario("US = 60\nDE = 30\nSG = 10", "/api/orders", &o.protocol)?;
    let (rec, stop, handle) = background(o, &s, o.duration * 10)?;
    let mut ok = 0;
    let started = Instant::now();
    for _ in 0..100 {
        if admin.call(Method::POST, "/reload", None).await?.0 == 200 {
            ok += 1;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let took = started.elapsed();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let elapsed = handle.await.map_err(|e| e.to_string())?;
    let summary = rec.summary(elapsed);
    let verdicts = vec![
        Verdict::check(
            "100 reloads accepted",
            ok == 100,
            format!("{ok} of 100 in {:.1}s", took.as_secs_f64()),
        ),
        Verdict::check(
            "no failed request",
            summary.failed == 0 && summary.requests > 0,
            format!("{} failed of {}", summary.failed, summary.requests),
        ),
    ];
    Ok(Report {
        title: "drill: reload-under-load".into(),
        summary,
        verdicts,
        notes: vec![],
    })
}
