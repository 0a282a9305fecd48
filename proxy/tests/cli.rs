//! The binaries as operators use them: `frontdoor check`, `frontdoor run` + SIGTERM, `proxyctl`.

mod common;

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::free_port;
use loadtest::Origin;

fn frontdoor() -> Command {
    Command::new(env!("CARGO_BIN_EXE_frontdoor"))
}

fn proxyctl() -> Command {
    Command::new(env!("CARGO_BIN_EXE_proxyctl"))
}

fn temp_file(name: &str, text: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("frontdoor-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let p = dir.join(name);
    std::fs::write(&p, text).expect("write");
    p
}

#[test]
fn check_prints_every_error_with_its_path() {
    let bad = temp_file(
        "three-mistakes.toml",
        r#"
[clusters.app]
connect_timeout = "soon"
endpoints = [{ address = "127.0.0.1" }]
[[routes]]
cluster = "ap"
"#,
    );
    let out = frontdoor().arg("check").arg(&bad).output().expect("run");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("  ")).collect();
    assert_eq!(lines.len(), 3, "{err}");
    for path in [
        "clusters.app.connect_timeout:",
        "clusters.app.endpoints[0].address:",
        "routes[0].cluster:",
    ] {
        assert!(
            lines.iter().any(|l| l.trim_start().starts_with(path)),
            "missing {path} in:\n{err}"
        );
    }
    let good = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/demo.toml");
    let out = frontdoor().arg("check").arg(&good).output().expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .contains("4 routes, 2 clusters, 7 endpoints, 3 regions")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_serves_proxyctl_operates_and_sigterm_drains() {
    let origin = Origin::builder().start().await.expect("origin");
    let (http, admin) = (free_port(), free_port());
    let config = temp_file(
        "run.toml",
        &format!(
            "[server]\nhttp = \"127.0.0.1:{http}\"\nadmin = \"127.0.0.1:{admin}\"\ndrain_timeout = \"5s\"\n[clusters.app]\nlimits = {{ max_requests_per_endpoint = 8 }}\nendpoints = [{{ address = \"{}\" }}]\n[[routes]]\nname = \"all\"\ncluster = \"app\"\n",
            origin.addr
        ),
    );
    let token = temp_file("token", "s3cret\n");
    let mut child = frontdoor()
        .args(["run", "--config"])
        .arg(&config)
        .arg("--admin-token-file")
        .arg(&token)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn frontdoor");
    // Read stdout as it comes: a full pipe would stall the access log's writer.
    let mut out_pipe = child.stdout.take().expect("stdout");
    let stdout_reader = std::thread::spawn(move || {
        let mut text = String::new();
        out_pipe.read_to_string(&mut text).expect("read stdout");
        text
    });
    let url = format!("http://127.0.0.1:{http}/");
    let client = loadtest::Client::http1();
    common::eventually("frontdoor answers", || {
        let (client, url) = (client.clone(), url.clone());
        async move { client.get(&url).await.is_ok_and(|r| r.status == 200) }
    })
    .await;
    let admin_url = format!("http://127.0.0.1:{admin}");

    let out = proxyctl()
        .args(["--admin", &admin_url, "--token", "s3cret", "status"])
        .output()
        .expect("proxyctl");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("ROUTE") && text.contains("all") && text.contains(&origin.addr.to_string()),
        "{text}"
    );
    // The endpoint's cap, nothing taken once the answer above ended.
    assert!(text.contains("SLOTS") && text.contains(" 0/8 "), "{text}");
    let out = proxyctl()
        .args([
            "--admin", &admin_url, "--token", "s3cret", "--json", "status",
        ])
        .output()
        .expect("proxyctl");
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("--json prints JSON");
    assert_eq!(json["routes"][0]["name"], "all");

    let out = proxyctl()
        .args(["--admin", &admin_url, "--token", "wrong", "status"])
        .output()
        .expect("proxyctl");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("401"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dead = format!("http://127.0.0.1:{}", free_port());
    let out = proxyctl()
        .args(["--admin", &dead, "--token", "x", "status"])
        .output()
        .expect("proxyctl");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("cannot reach the admin API"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A bad config on disk: `proxyctl reload` fails with the error, the old config keeps serving.
    std::fs::write(&config, "[[routes]]\ncluster = \"gone\"\n").expect("write");
    let out = proxyctl()
        .args(["--admin", &admin_url, "--token", "s3cret", "reload"])
        .output()
        .expect("proxyctl");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("routes[0].cluster"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(client.get(&url).await.expect("still serving").status, 200);

    // Enough requests for several of the access log's 64 KiB batches; every line must come out,
    // whole and in order.
    const LOGGED: usize = 600;
    for i in 0..LOGGED {
        let r = client
            .get(&format!("{url}logged/{i}"))
            .await
            .expect("logged request");
        assert_eq!(r.status, 200);
    }

    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let mut exit = None;
    for _ in 0..100 {
        if let Some(s) = child.try_wait().expect("wait") {
            exit = Some(s);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let exit = exit.unwrap_or_else(|| {
        let _ = child.kill();
        panic!("frontdoor did not exit after SIGTERM");
    });
    assert!(exit.success(), "exit status {exit}");
    let stdout = stdout_reader.join().expect("stdout reader");
    let logged: Vec<usize> = stdout
        .lines()
        .filter(|l| l.contains("\"target\":\"access\""))
        .filter_map(|l| {
            let line: serde_json::Value = serde_json::from_str(l).expect("access log is JSON");
            line["path"]
                .as_str()?
                .strip_prefix("/logged/")?
                .parse()
                .ok()
        })
        .collect();
    let first_wrong = logged.iter().enumerate().position(|(i, n)| i != *n);
    assert!(
        logged.len() == LOGGED && first_wrong.is_none(),
        "{} access lines for {LOGGED} requests; first out of place at {first_wrong:?}",
        logged.len()
    );
    let access = stdout
        .lines()
        .find(|l| l.contains("\"target\":\"access\""))
        .expect("an access log line");
    let line: serde_json::Value = serde_json::from_str(access).expect("access log is JSON");
    assert_eq!(line["route"], "all");
    assert_eq!(line["status"], 200);
    assert!(line["request_id"].as_str().is_some_and(|r| r.len() == 16));
}

/// `frontdoor certs dev` writes a CA and leaf a client can verify with `--cacert`;
/// `proxyctl certs reload` swaps in rotated files and refuses a broken pair.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certs_dev_and_proxyctl_certs_reload() {
    let origin = Origin::builder().start().await.expect("origin");
    let dir = std::env::temp_dir().join(format!("frontdoor-cli-certs-{}", std::process::id()));
    let gen_into = |out: &std::path::Path| {
        let o = frontdoor()
            .args(["certs", "dev", "shop.test", "--out"])
            .arg(out)
            .output()
            .expect("certs dev");
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let printed = gen_into(&dir);
    assert!(printed.contains("curl --cacert"), "{printed}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.join("key.pem"))
            .expect("key")
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "key is private: {mode:o}");
    }
    let config = format!(
        "[[tls.certificates]]\nhosts = [\"shop.test\"]\ncert = \"{}\"\nkey = \"{}\"\n{}\n[[routes]]\ncluster = \"app\"\n",
        dir.join("cert.pem").display(),
        dir.join("key.pem").display(),
        common::cluster("app", "", &[(origin.addr, "", "v")])
    );
    let fd = common::start_with(frontdoor::server::StartOptions {
        config: Some(frontdoor::state::ConfigSource::Inline(config)),
        https: Some("127.0.0.1:0".parse().expect("addr")),
        ..Default::default()
    })
    .await;
    let https = fd.https.expect("https");
    let ca1 = std::fs::read_to_string(dir.join("ca.pem")).expect("ca");
    loadtest::client::tls_get(https, "shop.test", &ca1, &[b"h2"], "/")
        .await
        .expect("verifies with the dev CA");

    let reload = || {
        proxyctl()
            .args([
                "--admin",
                &format!("http://{}", fd.admin),
                "--token",
                common::TOKEN,
            ])
            .args(["certs", "reload"])
            .output()
            .expect("proxyctl")
    };
    // A new pair elsewhere; its certificate alone over ours: a mismatch, refused.
    let next = dir.join("next");
    gen_into(&next);
    std::fs::copy(next.join("cert.pem"), dir.join("cert.pem")).expect("copy");
    let out = reload();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("does not match"), "{err}");
    loadtest::client::tls_get(https, "shop.test", &ca1, &[b"h2"], "/")
        .await
        .expect("the old certificate still serves");
    // The whole new pair: accepted, and only the new CA verifies.
    std::fs::copy(next.join("key.pem"), dir.join("key.pem")).expect("copy");
    let out = reload();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ca2 = std::fs::read_to_string(next.join("ca.pem")).expect("ca");
    loadtest::client::tls_get(https, "shop.test", &ca2, &[b"h2"], "/")
        .await
        .expect("verifies with the new CA");
    assert!(
        loadtest::client::tls_get(https, "shop.test", &ca1, &[b"h2"], "/")
            .await
            .is_err()
    );
    fd.shutdown().await;
    std::fs::remove_dir_all(dir).ok();
}
