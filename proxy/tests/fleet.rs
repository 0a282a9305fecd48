//! Fleet mode against a real etcd (Debian `etcd-server`), started on free loopback ports with a
//! temporary data directory and stopped by PID.

mod common;

use std::time::Duration;

use common::etcd::Etcd;
use common::{admin_call, eventually, start_with};
use frontdoor::fleet::FleetOptions;
use frontdoor::server::{Running, StartOptions};
use frontdoor::state::ConfigSource;
use http::{Method, Request, StatusCode};
use http_body_util::Full;
use loadtest::{Client, Origin, OriginHandle};
use serde_json::Value;
use tokio::time::Instant;

fn config(stable: &OriginHandle, canary: &OriginHandle, extra: &str) -> String {
    format!(
        r#"
[regions]
us-central1 = {{ jurisdiction = "us" }}
europe-west1 = {{ jurisdiction = "eu" }}
asia-southeast1 = {{ jurisdiction = "apac" }}
[clusters.app]
endpoints = [
  {{ address = "{}", region = "us-central1", version = "stable" }},
  {{ address = "{}", region = "us-central1", version = "canary" }},
]
[[routes]]
name = "app"
cluster = "app"
version = "stable"
[routes.rollout]
candidate = "canary"
weight = 10
{extra}
"#,
        stable.addr, canary.addr
    )
}

async fn member(etcd: &Etcd, text: &str, region: &str, id: &str) -> Running {
    start_with(StartOptions {
        config: Some(ConfigSource::Inline(text.to_string())),
        region: Some(region.into()),
        fleet: Some(FleetOptions {
            endpoints: vec![etcd.url()],
            name: "t".into(),
            member: id.into(),
        }),
        ..Default::default()
    })
    .await
}

async fn admin(fd: &Running, method: Method, path: &str, body: &str) -> Value {
    serde_json::from_slice(&admin_call(fd, method, path, body).await.body).unwrap_or(Value::Null)
}

async fn rollout(fd: &Running) -> (f64, String) {
    let v = admin(fd, Method::GET, "/rollouts", "").await;
    (
        v[0]["weight"].as_f64().unwrap_or(-1.0),
        v[0]["phase"].as_str().unwrap_or_default().to_string(),
    )
}

async fn fleet_state(fd: &Running) -> Value {
    admin(fd, Method::GET, "/status", "").await["fleet"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollout_state_spreads_across_the_fleet() {
    let etcd = Etcd::start().await;
    let (stable, canary) = (
        Origin::builder()
            .version("stable")
            .start()
            .await
            .expect("o"),
        Origin::builder()
            .version("canary")
            .start()
            .await
            .expect("o"),
    );
    let text = config(&stable, &canary, "");
    let fds = [
        member(&etcd, &text, "us-central1", "us-1").await,
        member(&etcd, &text, "europe-west1", "eu-1").await,
        member(&etcd, &text, "asia-southeast1", "asia-1").await,
    ];
    let first = &fds[0];
    eventually("all three members are listed", || async move {
        let f = fleet_state(first).await;
        f["state"] == "ok" && f["members"].as_array().is_some_and(|m| m.len() == 3)
    })
    .await;
    let members = fleet_state(first).await["members"].clone();
    let regions: Vec<&str> = members
        .as_array()
        .expect("members")
        .iter()
        .filter_map(|m| m["region"].as_str())
        .collect();
    assert_eq!(
        regions,
        ["asia-southeast1", "europe-west1", "us-central1"],
        "{members}"
    );

    // Shifts on one member reach the others; measure how long that takes.
    let mut latencies = Vec::new();
    for i in 0..20 {
        let weight = 11.0 + f64::from(i);
        let writer = &fds[i as usize % 3];
        let started = Instant::now();
        admin(
            writer,
            Method::POST,
            "/rollouts/app/shift",
            &format!(r#"{{"weight":{weight}}}"#),
        )
        .await;
        let fds_ref = &fds;
        eventually("every member applies the shift", || async move {
            let mut all = true;
            for fd in fds_ref {
                all &= rollout(fd).await.0 == weight;
            }
            all
        })
        .await;
        latencies.push(started.elapsed());
    }
    latencies.sort();
    println!(
        "fleet propagation over 20 shifts: p50 {:?}, p90 {:?}, max {:?}",
        latencies[10], latencies[18], latencies[19]
    );
    assert!(latencies[19] < Duration::from_secs(5), "{latencies:?}");

    // An operator rollback on one member: everyone rolls back.
    admin(
        &fds[1],
        Method::POST,
        "/rollouts/app/rollback",
        r#"{"reason":"drill"}"#,
    )
    .await;
    let fds_ref = &fds;
    eventually("every member is rolled back", || async move {
        let mut all = true;
        for fd in fds_ref {
            all &= rollout(fd).await == (0.0, "rolled_back".to_string());
        }
        all
    })
    .await;
    // proxyctl --etcd writes straight to etcd.
    let (_, rec) = frontdoor::fleet::act_in_etcd(
        &[etcd.url()],
        "t",
        None,
        Some(5.0),
        frontdoor::rollout::Phase::Progressing,
        "tester",
        "via etcd",
    )
    .await
    .expect("act");
    assert_eq!(rec.weight, 5.0);
    eventually("every member applies the etcd write", || async move {
        let mut all = true;
        for fd in fds_ref {
            all &= rollout(fd).await.0 == 5.0;
        }
        all
    })
    .await;
    for fd in fds {
        fd.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_etcd_outage_degrades_and_a_rollback_decided_meanwhile_wins() {
    let mut etcd = Etcd::start().await;
    let (stable, canary) = (
        Origin::builder()
            .version("stable")
            .start()
            .await
            .expect("o"),
        Origin::builder()
            .version("canary")
            .start()
            .await
            .expect("o"),
    );
    let text = config(&stable, &canary, "");
    let a = member(&etcd, &text, "us-central1", "a").await;
    let b = member(&etcd, &text, "europe-west1", "b").await;
    let (a_ref, b_ref) = (&a, &b);
    eventually("both connected", || async move {
        fleet_state(a_ref).await["state"] == "ok" && fleet_state(b_ref).await["state"] == "ok"
    })
    .await;

    etcd.stop();
    eventually("both report degraded", || async move {
        fleet_state(a_ref).await["state"] == "degraded"
            && fleet_state(b_ref).await["state"] == "degraded"
    })
    .await;
    // Still serving from the last known state.
    for fd in [&a, &b] {
        assert_eq!(
            Client::http1()
                .get(&common::url(fd, "/"))
                .await
                .expect("resp")
                .status,
            StatusCode::OK
        );
    }
    let metrics = admin_call(&a, Method::GET, "/metrics", "").await.text();
    assert!(metrics.contains("frontdoor_fleet_degraded 1"), "{metrics}");

    // During the outage: b shifts forward, a rolls back. When etcd returns, the rollback wins.
    admin(&b, Method::POST, "/rollouts/app/shift", r#"{"weight":50}"#).await;
    admin(
        &a,
        Method::POST,
        "/rollouts/app/rollback",
        r#"{"reason":"errors seen in us"}"#,
    )
    .await;
    etcd.spawn().await;
    eventually("both rolled back after etcd returns", || async move {
        rollout(a_ref).await == (0.0, "rolled_back".to_string())
            && rollout(b_ref).await == (0.0, "rolled_back".to_string())
    })
    .await;
    eventually("both ok again", || async move {
        fleet_state(a_ref).await["state"] == "ok" && fleet_state(b_ref).await["state"] == "ok"
    })
    .await;
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_pushed_to_etcd_is_applied_and_a_bad_one_rejected_by_every_member() {
    let etcd = Etcd::start().await;
    let (stable, canary) = (
        Origin::builder()
            .version("stable")
            .start()
            .await
            .expect("o"),
        Origin::builder()
            .version("canary")
            .start()
            .await
            .expect("o"),
    );
    let text = config(&stable, &canary, "");
    let a = member(&etcd, &text, "us-central1", "a").await;
    let b = member(&etcd, &text, "europe-west1", "b").await;
    let hash = a.proxy.active().snapshot.hash.clone();
    let (a_ref, b_ref) = (&a, &b);
    eventually("connected", || async move {
        fleet_state(a_ref).await["state"] == "ok" && fleet_state(b_ref).await["state"] == "ok"
    })
    .await;

    etcd.put("/frontdoor/t/config", "[[routes]]\ncluster = \"missing\"\n")
        .await;
    eventually("both reject it with the errors in status", || async move {
        let ea = fleet_state(a_ref).await["config_errors"].to_string();
        let eb = fleet_state(b_ref).await["config_errors"].to_string();
        ea.contains("routes[0].cluster") && eb.contains("routes[0].cluster")
    })
    .await;
    assert_eq!(
        a.proxy.active().snapshot.hash,
        hash,
        "the last good config keeps serving"
    );
    assert_eq!(
        Client::http1()
            .get(&common::url(&a, "/"))
            .await
            .expect("resp")
            .status,
        StatusCode::OK
    );

    let good = format!(
        "{text}\n[[routes]]\nname = \"extra\"\npath_prefix = \"/extra\"\ncluster = \"app\"\nversion = \"stable\"\n"
    );
    etcd.put("/frontdoor/t/config", &good).await;
    eventually("both apply the good one", || async move {
        a_ref.proxy.active().snapshot.routes.len() == 2
            && b_ref.proxy.active().snapshot.routes.len() == 2
    })
    .await;
    assert_eq!(
        fleet_state(&a).await["config_errors"],
        serde_json::json!([])
    );
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxyctl_with_etcd_shifts_and_purges_every_member() {
    let etcd = Etcd::start().await;
    let (stable, canary) = (
        Origin::builder()
            .version("stable")
            .start()
            .await
            .expect("o"),
        Origin::builder()
            .version("canary")
            .start()
            .await
            .expect("o"),
    );
    let cache = r#"
[cache]
max_bytes = "1MiB"
max_object_bytes = "64KiB"
[[cache.rules]]
paths = ["/**"]
[cache.rules.default]
Cache-Control = "public, max-age=600"
"#;
    let text = config(&stable, &canary, cache);
    let a = member(&etcd, &text, "us-central1", "a").await;
    let b = member(&etcd, &text, "europe-west1", "b").await;
    let (a_ref, b_ref) = (&a, &b);
    eventually("connected", || async move {
        fleet_state(a_ref).await["state"] == "ok" && fleet_state(b_ref).await["state"] == "ok"
    })
    .await;

    let proxyctl = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_proxyctl"))
            .args(["--etcd", &etcd.url(), "--fleet", "t"])
            .args(args)
            .output()
            .expect("proxyctl runs");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).to_string()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let (ok, text) = proxyctl(&["shift", "20%", "--reason", "fleet test"]);
    assert!(ok, "{text}");
    assert!(text.contains("app: shift → 20%"), "{text}");
    eventually("every member applies the shift", || async move {
        rollout(a_ref).await.0 == 20.0 && rollout(b_ref).await.0 == 20.0
    })
    .await;

    // Each member caches /doc; one purge through etcd empties both.
    let get = |fd: &Running| {
        let req = Request::get(format!("http://{}/doc", fd.http.expect("http")))
            .header("x-frontdoor-version", "stable")
            .body(Full::default())
            .expect("req");
        async move { Client::http1().send(req).await.expect("get") }
    };
    for fd in [&a, &b] {
        get(fd).await;
        assert_eq!(get(fd).await.header("x-cache"), Some("HIT"));
    }
    let (ok, text) = proxyctl(&["purge", "http://127.0.0.1/doc"]);
    assert!(ok, "{text}");
    eventually("every member drops the URL", || async move {
        admin(a_ref, Method::GET, "/cache", "").await["entries"] == 0
            && admin(b_ref, Method::GET, "/cache", "").await["entries"] == 0
    })
    .await;
    for fd in [&a, &b] {
        assert_eq!(get(fd).await.header("x-cache"), Some("MISS"));
    }
    let (ok, text) = proxyctl(&["purge", "--all", "http://x/"]);
    assert!(!ok, "a URL and --all together are refused: {text}");
}
