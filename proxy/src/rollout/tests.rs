//! Rollout state machine and controller, on tokio's paused clock.

use std::time::Duration;

use super::*;

fn snapshot(rollout: &str) -> Snapshot {
    routes::load(&format!(
        r#"
[clusters.app]
endpoints = [
  {{ address = "127.0.0.1:1", version = "stable" }},
  {{ address = "127.0.0.1:2", version = "canary" }},
]
[[routes]]
name = "app"
cluster = "app"
version = "stable"
rollout = {{ candidate = "canary", {rollout} }}
"#
    ))
    .expect("config")
}

const GATES: &str =
    r#"gates = { window = "30s", max_error_rate = 0.05, max_p95 = "2s", min_requests = 20 }"#;

fn rollouts(extra: &str) -> (Snapshot, Rollouts) {
    let s = snapshot(&format!("{GATES}, {extra}"));
    let r = Rollouts::default();
    r.sync(&s);
    (s, r)
}

/// A plain-HTTP request from `client`, through a trusted proxy or not.
fn who(client: std::net::IpAddr, trusted: bool) -> Who {
    Who {
        client,
        trusted,
        tls: false,
    }
}

fn state(r: &Rollouts) -> RolloutState {
    r.table().by_route["app"].state.clone()
}

/// Records `n` requests for a version over the last second, `errors` of them 5xx.
fn traffic(r: &Rollouts, version: Version, n: u64, errors: u64, latency: Duration) {
    let t = r.table();
    let w = &t.by_route["app"].windows;
    for i in 0..n {
        w.record(version, None, i < errors, latency, clock::now_ms());
    }
}

#[tokio::test(start_paused = true)]
async fn breach_rolls_back_on_the_next_tick() {
    let (_s, r) = rollouts("weight = 10");
    traffic(&r, Version::Stable, 900, 0, Duration::from_millis(5));
    traffic(&r, Version::Candidate, 100, 20, Duration::from_millis(5));
    let events = r.tick();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].action, "automatic-rollback");
    assert!(
        events[0]
            .reason
            .contains("error rate 20.0% (20 of 100 requests)"),
        "{}",
        events[0].reason
    );
    let st = state(&r);
    assert_eq!((st.weight, st.phase), (0.0, Phase::RolledBack));
    // It stays rolled back: more ticks change nothing, even once the window is clean.
    tokio::time::advance(Duration::from_secs(120)).await;
    assert!(r.tick().is_empty());
    assert_eq!(state(&r).phase, Phase::RolledBack);
    assert_eq!(r.events().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn thin_data_never_rolls_back() {
    let (_s, r) = rollouts("weight = 10");
    traffic(&r, Version::Candidate, 3, 1, Duration::from_millis(5));
    assert!(r.tick().is_empty());
    assert_eq!(state(&r).weight, 10.0);
    let gate = r.table().by_route["app"].gate.lock().expect("gate").clone();
    assert_eq!(gate.state, "inconclusive");
}

#[tokio::test(start_paused = true)]
async fn latency_breach_rolls_back() {
    let (_s, r) = rollouts("weight = 10");
    traffic(&r, Version::Candidate, 50, 0, Duration::from_millis(3000));
    let events = r.tick();
    assert_eq!(events.len(), 1, "{:?}", r.events());
    assert!(
        events[0].reason.starts_with("p95 latency"),
        "{}",
        events[0].reason
    );
}

#[tokio::test(start_paused = true)]
async fn rollback_lands_within_two_seconds_of_the_window_crossing() {
    let (_s, r) = rollouts("weight = 10");
    // A healthy candidate for a while, ticking every 250 ms as the controller does.
    for _ in 0..40 {
        traffic(&r, Version::Candidate, 5, 0, Duration::from_millis(5));
        tokio::time::advance(Duration::from_millis(250)).await;
        assert!(r.tick().is_empty());
    }
    // Then it starts failing half its requests; count the time until the weight is 0.
    let mut crossed_at = None;
    let mut rolled_back_at = None;
    for step in 0..40u64 {
        traffic(&r, Version::Candidate, 5, 3, Duration::from_millis(5));
        let now = step * 250;
        let stats = r.table().by_route["app"].windows.all[1].stats(clock::now_ms());
        if crossed_at.is_none() && stats.error_rate() > 0.05 {
            crossed_at = Some(now);
        }
        if !r.tick().is_empty() {
            rolled_back_at = Some(now);
            break;
        }
        tokio::time::advance(Duration::from_millis(250)).await;
    }
    let (crossed, done) = (
        crossed_at.expect("crossed"),
        rolled_back_at.expect("rolled back"),
    );
    assert!(
        done - crossed <= 2000,
        "rollback {} ms after the window crossed",
        done - crossed
    );
}

#[tokio::test(start_paused = true)]
async fn steps_advance_while_green_hold_while_thin_and_watch_after_promotion() {
    let (_s, r) = rollouts(
        r#"weight = 1, steps = [1, 10, 50, 100], step_hold = "10s", post_promotion_watch = "20s""#,
    );
    let green = |r: &Rollouts| {
        traffic(r, Version::Stable, 50, 0, Duration::from_millis(5));
        traffic(r, Version::Candidate, 50, 0, Duration::from_millis(5));
    };
    // Thin data: no advance even after the hold.
    tokio::time::advance(Duration::from_secs(11)).await;
    assert!(r.tick().is_empty());
    assert_eq!(state(&r).weight, 1.0);
    let mut seen = vec![];
    for _ in 0..40 {
        green(&r);
        for e in r.tick() {
            seen.push((e.action.clone(), e.weight_after));
        }
        tokio::time::advance(Duration::from_secs(2)).await;
    }
    assert_eq!(
        seen,
        vec![
            ("step".to_string(), 10.0),
            ("step".into(), 50.0),
            ("step".into(), 100.0),
            ("complete".into(), 100.0)
        ]
    );
    assert_eq!(state(&r).phase, Phase::Complete);

    // A breach during a promotion watch reverts.
    let (_s, r) = rollouts(r#"weight = 100, post_promotion_watch = "60s""#);
    r.act(None, Action::Promote, "test", "go").expect("promote");
    traffic(&r, Version::Candidate, 100, 50, Duration::from_millis(5));
    let events = r.tick();
    assert_eq!(events[0].action, "automatic-rollback");
    assert_eq!(state(&r).weight, 0.0);
}

#[tokio::test(start_paused = true)]
async fn operator_actions_and_the_red_gate() {
    let (_s, r) = rollouts("weight = 10");
    traffic(&r, Version::Candidate, 100, 30, Duration::from_millis(5));
    r.tick();
    assert_eq!(state(&r).phase, Phase::RolledBack);
    // Gates still red: shifting forward is refused, unless forced with a reason.
    let refused = r
        .act(
            None,
            Action::Shift {
                weight: 10.0,
                force: false,
            },
            "alice",
            "",
        )
        .expect_err("red");
    assert!(matches!(refused, ActionError::GatesRed(_)), "{refused}");
    assert!(
        r.act(
            None,
            Action::Shift {
                weight: 10.0,
                force: true
            },
            "alice",
            "  "
        )
        .is_err(),
        "force needs a reason"
    );
    let e = r
        .act(
            None,
            Action::Shift {
                weight: 10.0,
                force: true,
            },
            "alice",
            "fixed in v2.1",
        )
        .expect("forced");
    assert_eq!(
        (e.weight_before, e.weight_after, e.actor.as_str()),
        (0.0, 10.0, "alice")
    );
    assert_eq!(state(&r).phase, Phase::Progressing);
    r.act(Some("app"), Action::Pause, "bob", "lunch")
        .expect("pause");
    assert_eq!(state(&r).phase, Phase::Paused);
    r.act(Some("app"), Action::Rollback, "bob", "manual")
        .expect("rollback");
    assert_eq!(
        (state(&r).weight, state(&r).phase),
        (0.0, Phase::RolledBack)
    );
    assert!(matches!(
        r.act(Some("nope"), Action::Resume, "x", ""),
        Err(ActionError::NoSuchRollout(_))
    ));
    assert!(matches!(
        r.act(
            None,
            Action::Shift {
                weight: 120.0,
                force: false
            },
            "x",
            ""
        ),
        Err(ActionError::Invalid(_))
    ));
    let actions: Vec<String> = r.events().iter().map(|e| e.action.clone()).collect();
    assert_eq!(
        actions,
        ["automatic-rollback", "shift", "pause", "rollback"]
    );
}

#[tokio::test(start_paused = true)]
async fn blue_green_is_all_or_nothing() {
    let s = snapshot(&format!("mode = \"blue-green\", {GATES}"));
    let r = Rollouts::default();
    r.sync(&s);
    assert!(matches!(
        r.act(
            None,
            Action::Shift {
                weight: 50.0,
                force: false
            },
            "x",
            ""
        ),
        Err(ActionError::Invalid(_))
    ));
    r.act(
        None,
        Action::Shift {
            weight: 100.0,
            force: false,
        },
        "x",
        "switch",
    )
    .expect("switch");
    let st = state(&r);
    assert_eq!((st.weight, st.phase), (100.0, Phase::Promoted));
}

#[tokio::test(start_paused = true)]
async fn reload_keeps_state_when_the_candidate_is_unchanged() {
    let (s, r) = rollouts("weight = 10");
    r.act(
        None,
        Action::Shift {
            weight: 30.0,
            force: false,
        },
        "x",
        "",
    )
    .expect("shift");
    r.sync(&s);
    assert_eq!(state(&r).weight, 30.0);
    let other = routes::load(
        r#"
[clusters.app]
endpoints = [{ address = "127.0.0.1:1", version = "stable" }, { address = "127.0.0.1:3", version = "v3" }]
[[routes]]
name = "app"
cluster = "app"
version = "stable"
rollout = { candidate = "v3", weight = 5 }
"#,
    )
    .expect("config");
    r.sync(&other);
    assert_eq!(state(&r).weight, 5.0, "a new candidate starts over");
}

#[test]
fn ip_stickiness_keys_on_the_address_text() {
    // Each address lands on the side its text's bucket says, with the IP as the key and as the
    // fallback for a missing sticky header.
    for sticky in [
        r#"sticky = "ip""#,
        r#"sticky = "header", header = "x-user""#,
    ] {
        let s = snapshot(&format!("weight = 50, {sticky}"));
        let r = Rollouts::default();
        r.sync(&s);
        let st = state(&r);
        let mut sides = [0; 2];
        for i in 0..200u32 {
            let ip: std::net::IpAddr = if i % 2 == 0 {
                std::net::Ipv4Addr::from(0x0a00_0000 + i * 7919).into()
            } else {
                std::net::Ipv6Addr::from((0x2001_0db8_u128 << 96) | (u128::from(i) * 104_729))
                    .into()
            };
            let expected = if routes::rollout::is_candidate(
                routes::rollout::bucket("app", ip.to_string().as_bytes()),
                50.0,
            ) {
                Version::Candidate
            } else {
                Version::Stable
            };
            let got = assign("app", &st, &http::HeaderMap::new(), who(ip, false));
            assert_eq!(got.version, expected, "{sticky}: {ip}");
            assert!(got.set_cookie.is_none());
            sides[usize::from(got.version == Version::Candidate)] += 1;
        }
        assert!(sides[0] > 0 && sides[1] > 0, "{sticky}: {sides:?}");
    }
}

#[test]
fn assignment_is_sticky_and_monotonic_and_overridable() {
    let s = snapshot("weight = 10");
    let r = Rollouts::default();
    r.sync(&s);
    let mut st = state(&r);
    let ip: std::net::IpAddr = "10.0.0.1".parse().expect("ip");
    let mut headers = http::HeaderMap::new();
    let first = assign("app", &st, &headers, who(ip, false));
    let set = first.set_cookie.expect("cookie set for a new user");
    assert!(
        set.is_sensitive(),
        "a new user's cookie is not indexed by HPACK"
    );
    let value = set.to_str().expect("ascii");
    assert!(
        value.starts_with("fd-uid=") && value.contains("HttpOnly") && !value.contains("Secure"),
        "{value}"
    );
    // Over HTTPS a new user's cookie is `Secure` as well.
    let https = Who {
        tls: true,
        ..who(ip, false)
    };
    let secure = assign("app", &st, &headers, https)
        .set_cookie
        .expect("cookie");
    assert!(
        secure
            .to_str()
            .expect("ascii")
            .ends_with("; HttpOnly; SameSite=Lax; Secure"),
        "{secure:?}"
    );
    let cookie = value.split(';').next().expect("pair").to_string();
    headers.insert(
        http::header::COOKIE,
        http::HeaderValue::from_str(&format!("a=b; {cookie}")).expect("cookie"),
    );
    let again = assign("app", &st, &headers, who(ip, false));
    assert!(again.set_cookie.is_none());
    assert_eq!(again.version, first.version, "same cookie, same version");

    let mut candidates_at_10 = Vec::new();
    for user in 0..10_000 {
        let mut h = http::HeaderMap::new();
        h.insert(
            http::header::COOKIE,
            http::HeaderValue::from_str(&format!("fd-uid=u{user}")).expect("cookie"),
        );
        if assign("app", &st, &h, who(ip, false)).version == Version::Candidate {
            candidates_at_10.push(h);
        }
    }
    let share = candidates_at_10.len() as f64 / 100.0;
    assert!((share - 10.0).abs() <= 1.5, "{share}%");
    st.weight = 50.0;
    assert!(
        candidates_at_10
            .iter()
            .all(|h| assign("app", &st, h, who(ip, false)).version == Version::Candidate)
    );

    let mut forced = http::HeaderMap::new();
    forced.insert(
        "x-frontdoor-version",
        http::HeaderValue::from_static("canary"),
    );
    st.weight = 0.0;
    assert_eq!(
        assign("app", &st, &forced, who(ip, false)).version,
        Version::Candidate
    );
    st.config.override_trusted_only = true;
    assert_eq!(
        assign("app", &st, &forced, who(ip, false)).version,
        Version::Stable,
        "untrusted override ignored"
    );
    assert_eq!(
        assign("app", &st, &forced, who(ip, true)).version,
        Version::Candidate
    );
}
