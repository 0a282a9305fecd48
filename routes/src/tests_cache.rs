//! RFC 9111 / RFC 5861 / RFC 9213 rules, one table or test per rule, named by section; and the
//! cache policy's validation (lints) and explanation.

use crate::cache::{
    CachePolicy, Directives, Heuristic, LifetimeSource, PathPattern, ResponseFacts, Usability,
    age_value, parse_size,
};
use crate::{RequestFacts, RouteId, load};

const H: Heuristic = Heuristic {
    percent: 10,
    max_secs: 86_400,
};

fn cc(text: &str) -> Directives {
    Directives::parse_cache_control(std::iter::once(text))
}

/// A 200 received at t=1000 (request sent at t=1000) with these directives and `Date: 1000`.
fn resp(text: &str) -> ResponseFacts {
    ResponseFacts {
        status: 200,
        directives: cc(text),
        date: Some(1000),
        request_time: 1000,
        response_time: 1000,
        ..ResponseFacts::default()
    }
}

#[test]
fn rfc9111_5_2_cache_control_parsing() {
    let cases: &[(&str, Directives)] = &[
        (
            "public, max-age=60",
            Directives {
                public: true,
                max_age: Some(60),
                ..Default::default()
            },
        ),
        (
            "MAX-AGE=60, No-Store",
            Directives {
                max_age: Some(60),
                no_store: true,
                ..Default::default()
            },
        ),
        (
            "max-age=\"60\"",
            Directives {
                max_age: Some(60),
                ..Default::default()
            },
        ),
        (
            "no-cache=\"Set-Cookie, Foo\", s-maxage=5",
            Directives {
                no_cache: true,
                s_maxage: Some(5),
                ..Default::default()
            },
        ),
        (
            "max-stale, min-fresh=5, only-if-cached",
            Directives {
                max_stale: Some(u64::MAX),
                min_fresh: Some(5),
                only_if_cached: true,
                ..Default::default()
            },
        ),
        (
            "stale-while-revalidate=30, stale-if-error=600, unknown-ext=1",
            Directives {
                stale_while_revalidate: Some(30),
                stale_if_error: Some(600),
                ..Default::default()
            },
        ),
        ("", Directives::default()),
    ];
    for (text, want) in cases {
        assert_eq!(&cc(text), want, "Cache-Control: {text}");
    }
}

#[test]
fn rfc9111_1_2_2_delta_seconds_saturate_at_2_pow_31() {
    assert_eq!(
        cc("max-age=99999999999999999999").max_age,
        Some(2_147_483_648)
    );
}

#[test]
fn rfc9111_5_1_age_is_the_first_member_and_digits_only() {
    for (text, want) in [
        ("10", Some(10)),
        (" 10 ", Some(10)),
        ("10, 20", Some(10)),
        ("0", Some(0)),
        ("99999999999999999999", Some(2_147_483_648)),
        // Invalid: the cache ignores the field.
        ("+5", None),
        ("-5", None),
        ("5.0", None),
        ("five", None),
        ("", None),
        (", 5", None),
    ] {
        assert_eq!(age_value(text), want, "Age: {text:?}");
    }
}

#[test]
fn rfc9111_4_2_1_invalid_or_conflicting_max_age_is_stale() {
    for text in [
        "max-age=abc",
        "max-age=-1",
        "max-age",
        "max-age=60, max-age=120",
    ] {
        let r = resp(text);
        assert_eq!(r.lifetime(H).0, 0, "{text}");
    }
    // The same value twice is not a conflict.
    assert_eq!(resp("max-age=60, max-age=60").lifetime(H).0, 60);
    // Several field lines are one list.
    let d = Directives::parse_cache_control(["max-age=60", "max-age=120"].into_iter());
    assert_eq!(d.max_age, Some(0));
}

#[test]
fn rfc9111_4_2_1_lifetime_precedence() {
    let expires = |mut r: ResponseFacts, e: Option<u64>| {
        r.expires = Some(e);
        r
    };
    let cases: Vec<(&str, ResponseFacts, u64, LifetimeSource)> = vec![
        (
            "s-maxage beats max-age",
            resp("max-age=60, s-maxage=600"),
            600,
            LifetimeSource::SMaxAge,
        ),
        (
            "max-age beats Expires",
            expires(resp("max-age=60"), Some(5000)),
            60,
            LifetimeSource::MaxAge,
        ),
        (
            "Expires minus Date",
            expires(resp(""), Some(1300)),
            300,
            LifetimeSource::Expires,
        ),
        (
            "Expires in the past",
            expires(resp(""), Some(900)),
            0,
            LifetimeSource::Expires,
        ),
        (
            "invalid Expires means expired",
            expires(resp(""), None),
            0,
            LifetimeSource::Expires,
        ),
        ("nothing", resp(""), 0, LifetimeSource::None),
    ];
    for (name, r, life, source) in cases {
        assert_eq!(r.lifetime(H), (life, source), "{name}");
    }
}

#[test]
fn rfc9111_4_2_2_heuristic_freshness_only_where_allowed() {
    let mut r = resp("");
    r.last_modified = Some(0); // 1000 s before Date
    assert_eq!(r.lifetime(H), (100, LifetimeSource::Heuristic));
    // Capped.
    let capped = Heuristic {
        percent: 10,
        max_secs: 50,
    };
    assert_eq!(r.lifetime(capped).0, 50);
    // 302 is not heuristically cacheable: no lifetime, and not storable without explicit one.
    r.status = 302;
    assert_eq!(r.lifetime(H), (0, LifetimeSource::None));
    assert!(r.storable(false).is_err());
    // ... unless public says so.
    r.directives.public = true;
    assert_eq!(r.lifetime(H), (100, LifetimeSource::Heuristic));
    assert!(r.storable(false).is_ok());
}

#[test]
fn rfc9111_4_2_3_age_calculation() {
    // Request sent at 1000, response at 1004 (4 s delay), Date 998 (apparent age 6),
    // Age: 10 from an upstream cache → corrected initial age max(6, 10 + 4) = 14.
    let r = ResponseFacts {
        status: 200,
        date: Some(998),
        age: Some(10),
        request_time: 1000,
        response_time: 1004,
        ..ResponseFacts::default()
    };
    assert_eq!(r.current_age(1004), 14);
    // Resident time adds.
    assert_eq!(r.current_age(1034), 44);
    // A Date in the future gives no negative age.
    let r = ResponseFacts {
        date: Some(2000),
        request_time: 1000,
        response_time: 1000,
        ..ResponseFacts::default()
    };
    assert_eq!(r.current_age(1000), 0);
}

#[test]
fn rfc9111_3_storing_responses() {
    let cases: &[(&str, u16, bool, bool)] = &[
        // (Cache-Control, status, authenticated, storable)
        ("max-age=60", 200, false, true),
        ("no-store", 200, false, false),
        ("private, max-age=60", 200, false, false),
        ("max-age=60", 206, false, false),
        ("max-age=60", 500, false, false),
        ("max-age=60", 302, false, true),
        ("", 302, false, false),
        ("", 404, false, true),
        ("no-cache", 200, false, true),
        ("s-maxage=60", 410, false, true),
    ];
    for (text, status, auth, want) in cases {
        let mut r = resp(text);
        r.status = *status;
        assert_eq!(
            r.storable(*auth).is_ok(),
            *want,
            "{status} Cache-Control: {text}"
        );
    }
}

#[test]
fn rfc9111_3_5_authenticated_requests_need_explicit_permission() {
    for (text, want) in [
        ("max-age=60", false),
        ("public, max-age=60", true),
        ("s-maxage=60", true),
        ("must-revalidate, max-age=60", true),
    ] {
        assert_eq!(resp(text).storable(true).is_ok(), want, "{text}");
    }
}

#[test]
fn rfc9111_4_2_fresh_and_stale() {
    let r = resp("max-age=60");
    let none = Directives::default();
    assert_eq!(r.usability(&none, 1059, H), Usability::Fresh);
    assert_eq!(r.usability(&none, 1060, H), Usability::Revalidate);
}

#[test]
fn rfc9111_5_2_1_request_directives() {
    let r = resp("max-age=60");
    let cases: &[(&str, u64, Usability)] = &[
        ("no-cache", 1001, Usability::Revalidate),
        ("max-age=10", 1020, Usability::Revalidate),
        ("max-age=10", 1005, Usability::Fresh),
        ("min-fresh=30", 1040, Usability::Revalidate),
        ("min-fresh=30", 1020, Usability::Fresh),
        ("max-stale=30", 1080, Usability::StaleAccepted),
        ("max-stale=30", 1100, Usability::Revalidate),
        ("max-stale", 9999, Usability::StaleAccepted),
    ];
    for (text, now, want) in cases {
        assert_eq!(
            r.usability(&cc(text), *now, H),
            *want,
            "request Cache-Control: {text} at +{}",
            now - 1000
        );
    }
}

#[test]
fn rfc9111_5_2_2_response_directives_forbid_stale() {
    let req = cc("max-stale=1000");
    for text in [
        "max-age=60, must-revalidate",
        "max-age=60, proxy-revalidate",
        "s-maxage=60",
        "max-age=60, no-cache",
    ] {
        assert_eq!(
            resp(text).usability(&req, 1100, H),
            Usability::Revalidate,
            "{text}"
        );
    }
    // §5.2.2.4: no-cache revalidates even while fresh.
    assert_eq!(
        resp("max-age=60, no-cache").usability(&Directives::default(), 1001, H),
        Usability::Revalidate
    );
}

#[test]
fn rfc5861_3_stale_while_revalidate() {
    let r = resp("max-age=60, stale-while-revalidate=30");
    let none = Directives::default();
    assert_eq!(r.usability(&none, 1070, H), Usability::StaleWhileRevalidate);
    assert_eq!(r.usability(&none, 1090, H), Usability::StaleWhileRevalidate);
    assert_eq!(r.usability(&none, 1091, H), Usability::Revalidate);
    // must-revalidate wins.
    let r = resp("max-age=60, stale-while-revalidate=30, must-revalidate");
    assert_eq!(r.usability(&none, 1070, H), Usability::Revalidate);
}

#[test]
fn rfc5861_4_stale_if_error() {
    let none = Directives::default();
    let r = resp("max-age=60, stale-if-error=100");
    assert!(r.stale_if_error(&none, 1150, H));
    assert!(!r.stale_if_error(&none, 1161, H));
    // The request may ask for it too.
    let r = resp("max-age=60");
    assert!(!r.stale_if_error(&none, 1070, H));
    assert!(r.stale_if_error(&cc("stale-if-error=20"), 1070, H));
    // Not against must-revalidate (RFC 9111 §4.2.4).
    let r = resp("max-age=60, stale-if-error=100, must-revalidate");
    assert!(!r.stale_if_error(&none, 1070, H));
}

#[test]
fn rfc8941_targeted_field_syntax() {
    let ok = Directives::parse_targeted("max-age=60, public").expect("valid");
    assert_eq!(ok.max_age, Some(60));
    assert!(ok.public);
    // Booleans and parameters.
    let d = Directives::parse_targeted("no-store=?0, private;x=1, s-maxage=5").expect("valid");
    assert!(!d.no_store && d.private);
    assert_eq!(d.s_maxage, Some(5));
    // Wrong value type: the directive is ignored, the field still counts.
    let d = Directives::parse_targeted("max-age=\"60\", public").expect("valid");
    assert_eq!(d.max_age, None);
    assert!(d.public);
    for bad in [
        "",
        "  ",
        "max-age=60,",
        "Max-Age=60",
        "max-age=60 public",
        "max-age=6.0.0",
    ] {
        assert_eq!(Directives::parse_targeted(bad), None, "{bad:?}");
    }
}

fn policy(cache: &str) -> CachePolicy {
    let text = format!(
        r#"
[clusters.app]
endpoints = [{{ address = "127.0.0.1:9001" }}]
[[routes]]
name = "site"
cluster = "app"
[[routes]]
name = "api"
path_prefix = "/api"
cluster = "app"
{cache}
"#
    );
    load(&text)
        .unwrap_or_else(|e| panic!("config rejected:\n{e}"))
        .cache
}

fn cache_errors(cache: &str) -> Vec<String> {
    let text = format!(
        r#"
[clusters.app]
endpoints = [{{ address = "127.0.0.1:9001" }}]
[[routes]]
name = "site"
cluster = "app"
[[routes]]
name = "api"
hosts = ["api.example.com"]
path_prefix = "/api"
cluster = "app"
{cache}
"#
    );
    match load(&text) {
        Ok(_) => panic!("config accepted:\n{cache}"),
        Err(e) => e.0.iter().map(ToString::to_string).collect(),
    }
}

const REFERENCE: &str = r#"
[cache]
max_bytes = "64MiB"
[[cache.rules]]
name = "api"
paths = ["/api/**"]
no_store = true
[[cache.rules]]
name = "site"
paths = ["/**"]
[cache.rules.default]
Cache-Control = "public, max-age=3600, s-maxage=86400"
CDN-Cache-Control = "public, max-age=3600"
"#;

#[test]
fn rfc9213_2_1_targeted_field_takes_precedence_for_this_cache() {
    let p = policy(REFERENCE);
    let headers = [
        ("cache-control", "public, max-age=3600, s-maxage=86400"),
        ("cdn-cache-control", "public, max-age=60"),
    ];
    let get = |n: &str| headers.iter().find(|(k, _)| *k == n).map(|(_, v)| *v);
    let (d, from) = p.shared_directives(get);
    assert_eq!(from, "CDN-Cache-Control");
    assert_eq!(d.max_age, Some(60));
    assert_eq!(
        d.s_maxage, None,
        "Cache-Control's s-maxage is not for this cache"
    );
    // Invalid targeted field: fall back to Cache-Control.
    let headers = [
        ("cache-control", "max-age=10"),
        ("cdn-cache-control", "max-age=60,"),
    ];
    let get = |n: &str| headers.iter().find(|(k, _)| *k == n).map(|(_, v)| *v);
    let (d, from) = p.shared_directives(get);
    assert_eq!((d.max_age, from.as_str()), (Some(10), "Cache-Control"));
    // A targeted field makes Expires irrelevant.
    let r = ResponseFacts {
        status: 200,
        directives: Directives::parse_targeted("public").expect("valid"),
        targeted: true,
        date: Some(1000),
        expires: Some(Some(2000)),
        request_time: 1000,
        response_time: 1000,
        ..ResponseFacts::default()
    };
    assert_eq!(r.lifetime(H), (0, LifetimeSource::None));
}

#[test]
fn rules_first_match_wins_and_explain_says_what_happens() {
    let p = policy(REFERENCE);
    assert_eq!(
        p.rule_for(RouteId(1), "example.com", "/api/orders"),
        Some(0)
    );
    assert_eq!(p.rule_for(RouteId(1), "example.com", "/api"), Some(0));
    assert_eq!(p.rule_for(RouteId(0), "example.com", "/apis"), Some(1));
    assert_eq!(p.rule_for(RouteId(0), "example.com", "/"), Some(1));
    let s = load(&format!(
        "[clusters.app]\nendpoints = [{{ address = \"127.0.0.1:9001\" }}]\n[[routes]]\nname = \"site\"\ncluster = \"app\"\n{REFERENCE}"
    ))
    .expect("valid");
    let text = s.explain(&RequestFacts::new("example.com", "/index.html"));
    assert!(text.contains("cache rule:   \"site\""), "{text}");
    assert!(
        text.contains("fresh for 3600 s (CDN-Cache-Control max-age"),
        "{text}"
    );
    let text = s.explain(&RequestFacts::new("example.com", "/api/x"));
    assert!(text.contains("never looked up, never stored"), "{text}");
}

#[test]
fn path_patterns() {
    let p = |t: &str| PathPattern::parse(t).expect("valid");
    assert!(p("/**").matches("/") && p("/**").matches("/a/b"));
    assert!(p("/api/**").matches("/api") && p("/api/**").matches("/api/v1/x"));
    assert!(!p("/api/**").matches("/apis"));
    assert!(p("/u/*/avatar").matches("/u/42/avatar") && !p("/u/*/avatar").matches("/u/avatar"));
    assert!(p("/static/*.css").matches("/static/site.css"));
    assert!(!p("/static/*.css").matches("/static/site.js"));
    assert!(p("/").matches("/") && !p("/").matches("/a"));
    assert!(p("/**").covers(&p("/api/**")));
    assert!(p("/api/**").covers(&p("/api/*/x")));
    assert!(!p("/api/*").covers(&p("/api/**")));
    assert!(p("/static/*").covers(&p("/static/*.css")));
    for bad in ["api", "/a/**/b", "/a**", "/a/*x*"] {
        assert!(PathPattern::parse(bad).is_err(), "{bad}");
    }
    assert_eq!(parse_size("64MiB"), Ok(64 << 20));
    assert_eq!(parse_size("1 GB"), Ok(1_000_000_000));
    assert!(parse_size("12 parsecs").is_err());
}

#[test]
fn contradictions_and_dead_rules_are_errors() {
    let errors = cache_errors(
        r#"
[cache]
max_bytes = "1MiB"
max_object_bytes = "2MiB"
status_header = "x cache"
[[cache.rules]]
paths = ["/**"]
[cache.rules.set]
Cache-Control = "no-store, s-maxage=60"
[[cache.rules]]
name = "shadowed"
paths = ["/img/**"]
[[cache.rules]]
name = "misc"
hosts = ["nowhere.example.org"]
routes = ["api", "nope"]
paths = ["relative", "/api/**"]
no_store = true
remove = ["Set-Cookie"]
[cache.rules.default]
CDN-Cache-Control = "max-age=60,"
X-Thing = "1"
Vary = "*"
Cache-Control = "private, s-maxage=5"
"#,
    );
    let text = errors.join("\n");
    for want in [
        "cache.max_object_bytes: is larger than cache.max_bytes",
        "cache.status_header: \"x cache\" is not a header name",
        "cache.rules[0].set.Cache-Control: \"no-store, s-maxage=60\": no-store with s-maxage",
        "cache.rules[1]: can never match: cache.rules[0]",
        "cache.rules[2].paths[0]: \"relative\" must start with '/'",
        "cache.rules[2].routes[1]: unknown route \"nope\"",
        "cache.rules[2]: can never match: no route serves these hosts and paths",
        "cache.rules[2].default.CDN-Cache-Control: \"max-age=60,\" is not a valid Structured Fields dictionary",
        "cache.rules[2].default.X-Thing: not a cache header",
        "cache.rules[2].default.Vary: Vary: * makes every response uncacheable",
        "cache.rules[2].default.Cache-Control: \"private, s-maxage=5\": private with s-maxage",
        "cache.rules[2].remove[0]: not a cache header",
        "cache.rules[2]: no_store with set/default headers",
    ] {
        assert!(text.contains(want), "missing {want:?} in:\n{text}");
    }
}
