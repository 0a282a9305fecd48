//! The read-only status page (`/ui`) in headless Chromium (Debian `chromium`): it loads, shows
//! the three regions, and shows a rollback once one has happened.

mod common;

use std::process::Command;

use common::{TOKEN, start};
use http::Request;
use http_body_util::Full;
use loadtest::{Client, Origin};

/// The page as Chromium renders it after its scripts ran.
fn render(admin: std::net::SocketAddr) -> String {
    let profile = std::env::temp_dir().join(format!(
        "frontdoor-ui-{}-{}",
        std::process::id(),
        admin.port()
    ));
    let out = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
        ])
        .args([
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(["--virtual-time-budget=5000", "--dump-dom"])
        .arg(format!("http://{admin}/ui#token={TOKEN}"))
        .output()
        .expect("chromium is installed (Debian chromium; .ci/run installs it)");
    let _ = std::fs::remove_dir_all(profile);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_page_shows_regions_and_a_rollback() {
    let mut endpoints = Vec::new();
    let mut origins = Vec::new();
    for region in ["us-central1", "europe-west1", "asia-southeast1"] {
        for version in ["stable", "canary"] {
            let o = Origin::builder()
                .region(region)
                .version(version)
                .start()
                .await
                .expect("origin");
            endpoints.push(format!(
                "{{ address = \"{}\", region = \"{region}\", version = \"{version}\" }}",
                o.addr
            ));
            origins.push(o);
        }
    }
    let config = format!(
        r#"
[server]
region = "us-central1"
[regions]
us-central1 = {{ jurisdiction = "us" }}
europe-west1 = {{ jurisdiction = "eu" }}
asia-southeast1 = {{ jurisdiction = "apac" }}
[clusters.app]
endpoints = [{}]
[[routes]]
name = "app"
cluster = "app"
version = "stable"
rollout = {{ candidate = "canary", weight = 10 }}
"#,
        endpoints.join(", ")
    );
    let fd = start(&config).await;
    // Some traffic: status then shows the rollout per region and version.
    for user in 0..40 {
        let req = Request::get(common::url(&fd, "/"))
            .header("cookie", format!("fd-uid=u{user}"))
            .body(Full::default())
            .expect("req");
        Client::http1().send(req).await.expect("proxied");
    }
    let admin_addr = fd.admin;
    common::eventually("rollout status per region", || async move {
        let req = Request::get(format!("http://{admin_addr}/rollouts"))
            .header("authorization", format!("Bearer {TOKEN}"))
            .body(Full::default())
            .expect("req");
        let v: serde_json::Value =
            serde_json::from_slice(&Client::http1().send(req).await.expect("admin").body)
                .expect("json");
        v[0]["gate"]["regions"].as_array().is_some_and(|r| {
            r.iter().any(|x| {
                x["region"] == "us-central1"
                    && x["version"] == "stable"
                    && x["stats"]["requests"].as_u64() > Some(0)
            })
        })
    })
    .await;
    let admin = fd.admin;
    let dom = tokio::task::spawn_blocking(move || render(admin))
        .await
        .expect("render");
    for region in ["us-central1", "europe-west1", "asia-southeast1"] {
        assert!(
            dom.contains(region),
            "{region} missing from the rendered page:\n{dom}"
        );
    }
    assert!(dom.contains("progressing") && dom.contains("10%"), "{dom}");

    let req = Request::post(format!("http://{}/rollouts/app/rollback", fd.admin))
        .header("authorization", format!("Bearer {TOKEN}"))
        .body(Full::new(bytes::Bytes::from_static(
            br#"{"reason":"ui test"}"#,
        )))
        .expect("req");
    assert_eq!(
        Client::http1().send(req).await.expect("rollback").status,
        200
    );
    let dom = tokio::task::spawn_blocking(move || render(admin))
        .await
        .expect("render");
    assert!(
        dom.contains("rolled_back") && dom.contains("ui test"),
        "{dom}"
    );
    fd.shutdown().await;
    drop(origins);
}
