//! Canary rollouts end to end: sticky monotonic splits through `shift`, and an automatic
//! rollback when the canary starts failing under load.

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use common::{TOKEN, eventually, start, url};
use frontdoor::server::Running;
use http::{Request, StatusCode};
use http_body_util::Full;
use loadtest::{Client, FaultSpec, Origin};
use serde_json::Value;

async fn admin(fd: &Running, method: http::Method, path: &str, body: &str) -> (StatusCode, Value) {
    let req = Request::builder()
        .method(method)
        .uri(format!("http://{}{}", fd.admin, path))
        .header("authorization", format!("Bearer {TOKEN}"))
        .body(Full::new(bytes::Bytes::from(body.to_string())))
        .expect("req");
    let resp = Client::http1().send(req).await.expect("admin");
    (
        resp.status,
        serde_json::from_slice(&resp.body).unwrap_or(Value::Null),
    )
}

/// Sends one request per user (cookie `fd-uid=u{i}`) for `users`, returns those on canary.
async fn canary_users(fd: &Running, users: std::ops::Range<u32>) -> HashSet<u32> {
    let users: Vec<u32> = users.collect();
    let mut tasks = Vec::new();
    for chunk in users.chunks(users.len().div_ceil(4).max(1)) {
        let (client, u, chunk) = (Client::http1(), url(fd, "/"), chunk.to_vec());
        tasks.push(tokio::spawn(async move {
            let mut on = HashSet::new();
            for user in chunk {
                let req = Request::get(&u)
                    .header("cookie", format!("fd-uid=u{user}"))
                    .body(Full::default())
                    .expect("req");
                let r = client.send(req).await.expect("resp");
                assert_eq!(r.status, StatusCode::OK);
                assert!(
                    r.header("set-cookie").is_none(),
                    "a user with a cookie gets no new one"
                );
                if r.header("x-origin-version") == Some("canary") {
                    on.insert(user);
                }
            }
            on
        }));
    }
    let mut all = HashSet::new();
    for t in tasks {
        all.extend(t.await.expect("task"));
    }
    all
}

/// A cluster of a stable and a canary endpoint, and a route on stable with a rollout to canary
/// (gates over 5 s: at most 5% errors, p95 under 2 s, 20 requests at least).
fn rollout_config(stable: std::net::SocketAddr, canary: std::net::SocketAddr) -> String {
    format!(
        r#"
[clusters.app]
outlier = {{ consecutive_failures = 0 }}
endpoints = [{{ address = "{stable}", version = "stable" }}, {{ address = "{canary}", version = "canary" }}]
[[routes]]
name = "app"
cluster = "app"
version = "stable"
[routes.rollout]
candidate = "canary"
gates = {{ window = "5s", max_error_rate = 0.05, max_p95 = "2s", min_requests = 20 }}
"#
    )
}

/// Four clients send requests, each for a new user, until the controller has rolled the
/// canary back; returns how many requests failed.
async fn load_until_rolled_back(fd: &Running) -> u32 {
    let stop = Arc::new(AtomicBool::new(false));
    let mut load = Vec::new();
    for t in 0..4u32 {
        let (client, u, stop) = (Client::http1(), url(fd, "/"), Arc::clone(&stop));
        load.push(tokio::spawn(async move {
            let (mut user, mut failed) = (t, 0u32);
            while !stop.load(Ordering::Relaxed) {
                let req = Request::get(&u)
                    .header("cookie", format!("fd-uid=load{user}"))
                    .body(Full::default())
                    .expect("req");
                if client.send(req).await.is_err() {
                    failed += 1;
                }
                user += 4;
            }
            failed
        }));
    }
    eventually("the canary is rolled back", || async move {
        let (_, v) = admin(fd, http::Method::GET, "/rollouts", "").await;
        v[0]["phase"] == "rolled_back"
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    let mut failed = 0;
    for l in load {
        failed += l.await.expect("load");
    }
    failed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shift_is_sticky_and_monotonic_and_a_failing_canary_rolls_back() {
    let stable = Origin::builder()
        .version("stable")
        .start()
        .await
        .expect("stable");
    let canary = Origin::builder()
        .version("canary")
        .start()
        .await
        .expect("canary");
    let fd = start(&rollout_config(stable.addr, canary.addr)).await;

    // 0%: nobody on canary; a new user gets a sticky cookie, `Secure` only over HTTPS (here
    // the listener is plain and the peer untrusted, so its `X-Forwarded-Proto` says nothing).
    let first = Client::http1().get(&url(&fd, "/")).await.expect("resp");
    assert_eq!(first.header("x-origin-version"), Some("stable"));
    assert!(
        first
            .header("set-cookie")
            .is_some_and(|c| c.starts_with("fd-uid=") && !c.contains("Secure"))
    );
    let req = http::Request::get(url(&fd, "/"))
        .header("x-forwarded-proto", "https")
        .body(http_body_util::Full::default())
        .expect("request");
    let claimed = Client::http1().send(req).await.expect("resp");
    assert!(
        claimed
            .header("set-cookie")
            .is_some_and(|c| !c.contains("Secure"))
    );

    let (s, v) = admin(
        &fd,
        http::Method::POST,
        "/rollouts/_/shift",
        r#"{"weight":10,"actor":"test"}"#,
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let at10 = canary_users(&fd, 0..10_000).await;
    let share = at10.len() as f64 / 100.0;
    assert!(
        (share - 10.0).abs() <= 1.5,
        "{share}% of 10,000 users on canary at 10%"
    );
    // The same users again: the same answer, every one.
    assert_eq!(
        canary_users(&fd, 0..2_000).await,
        at10.iter().copied().filter(|u| *u < 2_000).collect()
    );

    shift_to_half(&fd).await;
    let at50 = canary_users(&fd, 0..10_000).await;
    assert!(
        at10.is_subset(&at50),
        "{} users moved back to stable when the weight went up",
        at10.difference(&at50).count()
    );
    assert!(
        (at50.len() as f64 / 100.0 - 50.0).abs() <= 2.0,
        "{}",
        at50.len()
    );

    // 20% errors on canary under load: the controller rolls it back by itself.
    canary.faults.set(FaultSpec {
        error_rate: 0.2,
        ..Default::default()
    });
    load_until_rolled_back(&fd).await;
    let (_, rollouts) = admin(&fd, http::Method::GET, "/rollouts", "").await;
    assert_eq!(rollouts[0]["weight"], 0.0);
    assert!(
        rollouts[0]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("error rate")),
        "{rollouts}"
    );
    let (_, events) = admin(&fd, http::Method::GET, "/events", "").await;
    let actions: Vec<&str> = events
        .as_array()
        .expect("events")
        .iter()
        .filter_map(|e| e["action"].as_str())
        .collect();
    assert_eq!(actions, ["shift", "shift", "automatic-rollback"]);
    assert_eq!(events[0]["actor"], "test");
    // Everyone is back on stable, together.
    assert!(canary_users(&fd, 0..1_000).await.is_empty());
    // Gates are still red: shifting forward needs --force with a reason.
    let (s, v) = admin(
        &fd,
        http::Method::POST,
        "/rollouts/app/shift",
        r#"{"weight":10}"#,
    )
    .await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    let (s, _) = admin(
        &fd,
        http::Method::POST,
        "/rollouts/app/shift",
        r#"{"weight":10,"force":true,"reason":"fixed"}"#,
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    // Testers can force a version with the override header.
    let req = Request::get(url(&fd, "/"))
        .header("x-frontdoor-version", "canary")
        .body(Full::default())
        .expect("req");
    assert_eq!(
        Client::http1()
            .send(req)
            .await
            .expect("resp")
            .header("x-origin-version"),
        Some("canary")
    );
    fd.shutdown().await;
}

/// A new user's sticky cookie is `Secure` when the client came over HTTPS: here as a trusted
/// proxy says it did (`X-Forwarded-Proto`); over plain HTTP it is not.
#[tokio::test]
async fn the_sticky_cookie_is_secure_over_https() {
    let origin = Origin::builder()
        .version("stable")
        .start()
        .await
        .expect("origin");
    let config = format!(
        "[server]\ntrusted_proxies = [\"127.0.0.0/8\"]\n{}",
        rollout_config(origin.addr, origin.addr)
    );
    let fd = start(&config).await;
    for (proto, secure) in [("https", true), ("HTTPS", true), ("http", false)] {
        let req = http::Request::get(url(&fd, "/"))
            .header("x-forwarded-proto", proto)
            .body(http_body_util::Full::default())
            .expect("request");
        let resp = Client::http1().send(req).await.expect("resp");
        let cookie = resp.header("set-cookie").expect("a new user's cookie");
        assert_eq!(cookie.ends_with("; Secure"), secure, "{proto}: {cookie}");
    }
    fd.shutdown().await;
}

/// A candidate that answers `200` and then breaks off its bodies fails its users as surely as
/// one answering `503`: the analysis counts each broken answer as the candidate's error, and
/// the controller rolls it back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_candidate_that_breaks_off_its_answers_rolls_back() {
    let stable = Origin::builder()
        .version("stable")
        .start()
        .await
        .expect("stable");
    let canary = common::raw_upstream(|mut s| async move {
        use tokio::io::AsyncWriteExt;
        if common::read_head(&mut s).await.is_some() {
            // A head promising 1,000 bytes, 100 of them, and the connection closes.
            let mut answer =
                b"HTTP/1.1 200 OK\r\nx-origin-version: canary\r\ncontent-length: 1000\r\n\r\n"
                    .to_vec();
            answer.extend([b'c'; 100]);
            let _ = s.write_all(&answer).await;
        }
    })
    .await;
    let fd = start(&rollout_config(stable.addr, canary)).await;
    shift_to_half(&fd).await;
    // The heads are 200s either way; a canary's body never arrives whole.
    let failed = load_until_rolled_back(&fd).await;
    assert!(failed > 0, "the canary's answers were cut");
    rolled_back_for_its_errors(&fd).await;
    fd.shutdown().await;
}

/// Shifts half the users of route `app` to its canary.
async fn shift_to_half(fd: &Running) {
    let (s, v) = admin(
        fd,
        http::Method::POST,
        "/rollouts/app/shift",
        r#"{"weight":50}"#,
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
}

/// The canary was rolled back for its error rate, and no user is on it any more.
async fn rolled_back_for_its_errors(fd: &Running) {
    let (_, rollouts) = admin(fd, http::Method::GET, "/rollouts", "").await;
    assert!(
        rollouts[0]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("error rate")),
        "{rollouts}"
    );
    assert!(canary_users(fd, 0..200).await.is_empty());
}

/// A gRPC candidate fails its calls the way gRPC servers do: HTTP 200, and `grpc-status: 14`
/// (UNAVAILABLE) in the trailers. The analysis counts those as the candidate's errors and
/// rolls it back; a stable answering `grpc-status: 0` is fine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_candidate_failing_under_200s_rolls_back() {
    let stable = common::grpc_upstream("0", "stable", false).await;
    let canary = common::grpc_upstream("14", "canary", false).await;
    let config = rollout_config(stable, canary)
        .replace("[clusters.app]\n", "[clusters.app]\nprotocol = \"h2\"\n");
    let fd = start(&config).await;
    shift_to_half(&fd).await;
    assert_eq!(
        load_until_rolled_back(&fd).await,
        0,
        "every call answered 200"
    );
    rolled_back_for_its_errors(&fd).await;
    fd.shutdown().await;
}

/// `rollout_config` as a blue-green rollout at 0 whose candidate gets copies of every request
/// stable serves, and goes to 100 after a second of green gates.
fn mirrored_config(stable: std::net::SocketAddr, canary: std::net::SocketAddr) -> String {
    rollout_config(stable, canary).replace(
        "candidate = \"canary\"\n",
        "candidate = \"canary\"\nmode = \"blue-green\"\nmirror_percent = 100\nsteps = [100]\nstep_hold = \"1s\"\n",
    )
}

/// One request of a new user (a `POST` with a body); the version that answered.
async fn version_of(client: &Client, fd: &Running, method: http::Method, user: u32) -> String {
    let body = if method == http::Method::POST {
        bytes::Bytes::from_static(b"form")
    } else {
        bytes::Bytes::new()
    };
    let req = Request::builder()
        .method(method)
        .uri(url(fd, "/"))
        .header("cookie", format!("fd-uid=m{user}"))
        .body(Full::new(body))
        .expect("req");
    let r = client.send(req).await.expect("resp");
    assert_eq!(r.status, StatusCode::OK);
    r.header("x-origin-version").unwrap_or_default().to_string()
}

/// A candidate failing every request is rolled back on copies of stable's requests alone:
/// no user ever got it. A request that could act twice (a `POST` with a body) is not copied,
/// and nothing is copied once the rollout is rolled back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mirrored_candidate_failing_is_rolled_back_before_any_user_gets_it() {
    let stable = Origin::builder()
        .version("stable")
        .start()
        .await
        .expect("stable");
    let canary = Origin::builder()
        .version("canary")
        .start()
        .await
        .expect("canary");
    canary.faults.set(FaultSpec {
        error_rate: 1.0,
        ..Default::default()
    });
    let fd = start(&mirrored_config(stable.addr, canary.addr)).await;
    let client = Client::http1();
    for user in 0..10 {
        assert_eq!(
            version_of(&client, &fd, http::Method::POST, user).await,
            "stable"
        );
    }
    for user in 10..20 {
        assert_eq!(
            version_of(&client, &fd, http::Method::GET, user).await,
            "stable"
        );
    }
    let copies = &canary.faults;
    eventually("ten copies answered", || async { copies.requests() >= 10 }).await;
    assert_eq!(copies.requests(), 10, "the GETs' copies, not the POSTs'");
    let mut user = 20;
    while admin(&fd, http::Method::GET, "/rollouts", "").await.1[0]["phase"] != "rolled_back" {
        for _ in 0..10 {
            assert_eq!(
                version_of(&client, &fd, http::Method::GET, user).await,
                "stable"
            );
            user += 1;
        }
        assert!(user < 100_000, "never rolled back");
    }
    rolled_back_for_its_errors(&fd).await;
    let metrics = common::metrics_with(
        &fd,
        &["frontdoor_rollout_mirrored_total{route=\"app\",result=\"failed\"}"],
    )
    .await;
    assert!(
        !metrics.contains("frontdoor_rollout_mirrored_total{route=\"app\",result=\"answered\"}"),
        "{metrics}"
    );
    let after = copies.requests();
    for u in 0..20 {
        assert_eq!(
            version_of(&client, &fd, http::Method::GET, 1000 + u).await,
            "stable"
        );
    }
    assert_eq!(copies.requests(), after, "no copies once rolled back");
    fd.shutdown().await;
}

/// A healthy candidate is judged green on copies (marked `x-frontdoor-mirror: 1`) while every
/// user gets stable, and the controller then switches users over: blue-green with shadow
/// traffic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mirrored_candidate_green_on_copies_is_promoted() {
    use std::sync::atomic::AtomicU32;
    let stable = Origin::builder()
        .version("stable")
        .start()
        .await
        .expect("stable");
    let seen = Arc::new([AtomicU32::new(0), AtomicU32::new(0)]);
    let counts = Arc::clone(&seen);
    let canary = common::raw_upstream(move |mut s| {
        let counts = Arc::clone(&counts);
        async move {
            use tokio::io::AsyncWriteExt;
            while let Some(head) = common::read_message(&mut s).await {
                let copy = head
                    .to_ascii_lowercase()
                    .contains("\r\nx-frontdoor-mirror: 1\r\n");
                counts[usize::from(copy)].fetch_add(1, Ordering::Relaxed);
                let answer =
                    "HTTP/1.1 200 OK\r\nx-origin-version: canary\r\ncontent-length: 2\r\n\r\nok";
                if s.write_all(answer.as_bytes()).await.is_err() {
                    return;
                }
            }
        }
    })
    .await;
    let fd = start(&mirrored_config(stable.addr, canary)).await;
    let client = Client::http1();
    let mut user = 0;
    let mut versions = Vec::new();
    while versions.last().is_none_or(|v| v == "stable") {
        versions.push(version_of(&client, &fd, http::Method::GET, user).await);
        user += 1;
        assert!(
            user < 100_000,
            "never promoted: {:?}",
            admin(&fd, http::Method::GET, "/rollouts", "").await.1
        );
    }
    let (_, rollouts) = admin(&fd, http::Method::GET, "/rollouts", "").await;
    assert_eq!(rollouts[0]["weight"], 100.0, "{rollouts}");
    assert_eq!(
        seen[0].load(Ordering::Relaxed),
        1,
        "one user request, the last"
    );
    assert!(
        seen[1].load(Ordering::Relaxed) >= 20,
        "judged on copies: {}",
        seen[1].load(Ordering::Relaxed)
    );
    assert!(versions[..versions.len() - 1].iter().all(|v| v == "stable"));
    fd.shutdown().await;
}
