//! The `loadtest` binary against an in-process origin: verdicts decide the exit status and the
//! report files are written.

use std::process::Command;

use loadtest::Origin;

fn scenario(dir: &std::path::Path, allowed: &str) -> std::path::PathBuf {
    let p = dir.join(format!("scenario-{allowed}.toml"));
    std::fs::write(
        &p,
        format!(
            "duration = \"1s\"\nrate = 200\nusers = 50\nprotocol = \"http1\"\n[countries]\nDE = 1\n[[paths]]\npath = \"/\"\n[expect]\nmax_error_rate = 0.0\nmax_p99 = \"2s\"\n[expect.regions]\nDE = [\"{allowed}\"]\n"
        ),
    )
    .expect("write");
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_passes_and_fails_on_its_verdicts_and_writes_a_report() {
    let origin = Origin::builder()
        .region("europe-west1")
        .start()
        .await
        .expect("origin");
    let dir = std::env::temp_dir().join(format!("loadtest-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let proxy = format!("http://{}", origin.addr);
    let report = dir.join("report");

    let ok = tokio::task::spawn_blocking({
        let (s, proxy, report) = (
            scenario(&dir, "europe-west1"),
            proxy.clone(),
            report.clone(),
        );
        move || {
            Command::new(env!("CARGO_BIN_EXE_loadtest"))
                .arg("--proxy")
                .arg(proxy)
                .arg("--report")
                .arg(report)
                .arg("run")
                .arg(s)
                .output()
        }
    })
    .await
    .expect("join")
    .expect("run");
    let out = String::from_utf8_lossy(&ok.stdout);
    assert!(
        ok.status.success(),
        "{out}\n{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(out.contains("[PASS] no residency leaks"), "{out}");
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(report.join("summary.json")).expect("summary.json"))
            .expect("json");
    let requests = summary["summary"]["requests"].as_u64().expect("requests");
    assert!((150..=250).contains(&requests), "1 s at 200/s: {requests}");
    assert!(
        std::fs::read_to_string(report.join("report.html"))
            .expect("report.html")
            .contains("<svg")
    );
    assert!(origin.faults.requests() >= requests);

    // The same traffic, but DE may only be served from asia: every answer is a leak, exit 1.
    let bad = tokio::task::spawn_blocking({
        let (s, proxy) = (scenario(&dir, "asia-southeast1"), proxy.clone());
        move || {
            Command::new(env!("CARGO_BIN_EXE_loadtest"))
                .arg("--proxy")
                .arg(proxy)
                .arg("run")
                .arg(s)
                .output()
        }
    })
    .await
    .expect("join")
    .expect("run");
    let out = String::from_utf8_lossy(&bad.stdout);
    assert_eq!(bad.status.code(), Some(1), "{out}");
    assert!(out.contains("[FAIL] no residency leaks"), "{out}");

    // A broken scenario is a usage error (2) with the reason.
    let broken = dir.join("broken.toml");
    std::fs::write(&broken, "rate = -1\n").expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_loadtest"))
        .arg("run")
        .arg(&broken)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("rate"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::remove_dir_all(dir).ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_model_sends_back_to_back_on_its_own_connections() {
    use std::sync::Arc;
    use std::sync::atomic::AtomicBool;
    use std::time::Duration;

    use loadtest::engine::{self, Mix, Recorder, Target};
    use loadtest::scenario::{Model, Scenario};
    let origin = Origin::builder()
        .region("us-central1")
        .version("stable")
        .start()
        .await
        .expect("origin");
    let s = Scenario::parse("concurrency = 4\nduration = \"1s\"\nusers = 20\n").expect("scenario");
    let rec = Arc::new(Recorder::default());
    let model = s.model(None, None);
    assert_eq!(
        model,
        Model::Closed {
            workers: 4,
            duration: Duration::from_secs(1)
        }
    );
    let elapsed = engine::run(
        &model,
        Arc::new(Mix::new(&s).expect("mix")),
        &Target {
            base: format!("http://{}", origin.addr),
            connections: None,
        },
        engine::client("http1"),
        Arc::clone(&rec),
        Arc::new(AtomicBool::new(false)),
    )
    .await;
    let summary = rec.summary(elapsed);
    assert!(
        summary.requests > 100,
        "{} requests in 1 s on 4 connections",
        summary.requests
    );
    assert_eq!(summary.failed, 0, "{:?}", summary.statuses);
    assert_eq!(summary.by_version.len(), 1);
    assert_eq!(summary.by_version[0].region, "us-central1");
    assert_eq!(origin.faults.requests(), summary.requests);
}

/// The open model over plain HTTP/1.1 sends exactly the scheduled arrivals (rate × duration per
/// step) on its own connections, whatever the server's speed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_model_sends_every_scheduled_arrival() {
    use std::sync::Arc;
    use std::sync::atomic::AtomicBool;
    use std::time::Duration;

    use loadtest::engine::{self, Mix, Recorder, Target};
    use loadtest::scenario::{Model, Scenario};
    let origin = Origin::builder().start().await.expect("origin");
    let s = Scenario::parse("steps = [[200, \"500ms\"], [400, \"500ms\"]]\nusers = 50\n")
        .expect("scenario");
    let model = s.model(None, None);
    assert!(matches!(&model, Model::Open(segments) if segments.len() == 2));
    let rec = Arc::new(Recorder::default());
    let elapsed = engine::run(
        &model,
        Arc::new(Mix::new(&s).expect("mix")),
        &Target {
            base: format!("http://{}", origin.addr),
            connections: Some(4),
        },
        engine::client("http1"),
        Arc::clone(&rec),
        Arc::new(AtomicBool::new(false)),
    )
    .await;
    let summary = rec.summary(elapsed);
    assert_eq!(summary.requests, 100 + 200, "{:?}", summary.statuses);
    assert_eq!(summary.failed, 0, "{:?}", summary.statuses);
    assert_eq!(origin.faults.requests(), 300);
    assert!(elapsed >= Duration::from_millis(990), "{elapsed:?}");
}
