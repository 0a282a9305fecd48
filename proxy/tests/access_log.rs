//! The access log as an operator reads it: one line per request, written when its answer has
//! ended, with the body bytes the client was handed and how the answer ended: complete, cut by
//! the upstream, or given up by the client (before its head: status 499).
//!
//! The lines are captured by the process's log sink. These tests run on a current-thread
//! runtime: the lines of a thread wait in it until handed over, and `LogSink::flush` hands over
//! the calling thread's.

mod common;

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use frontdoor::telemetry::LogSink;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Capture {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The process's log sink, writing into a buffer this file reads.
fn capture() -> &'static Capture {
    static CAPTURE: OnceLock<Capture> = OnceLock::new();
    CAPTURE.get_or_init(|| {
        let capture = Capture::default();
        LogSink::install(Box::new(capture.clone()));
        capture
    })
}

/// The access lines written so far for `path`.
fn lines_for(path: &str) -> Vec<serde_json::Value> {
    let sink = LogSink::installed().expect("a sink");
    sink.flush();
    let text = String::from_utf8(capture().0.lock().expect("capture").clone()).expect("UTF-8");
    text.lines()
        .filter(|l| l.contains("\"target\":\"access\""))
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("a JSON line"))
        .filter(|v| v["path"] == path)
        .collect()
}

/// The one access line for `path`, once it is written (real network I/O: polled).
async fn line_for(path: &str) -> serde_json::Value {
    for _ in 0..500 {
        let mut lines = lines_for(path);
        assert!(lines.len() <= 1, "one line per request: {lines:?}");
        if let Some(line) = lines.pop() {
            return line;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("no access line for {path}");
}

const WHOLE: usize = 100_000;
const CUT_AT: usize = 65_536;
const BIG: u64 = 64 << 20;

/// An origin by path: `/whole` a 100,000-byte answer; `/cut` a head promising 1,000,000 bytes
/// and 64 KiB of them before the connection closes; `/big` 64 MiB, written for as long as the
/// proxy takes them; `/stall` a head promising 1,000 bytes, 10 of them, then silence;
/// `/early` the same head and 10 bytes at once, then reads the request's body until it ends;
/// `/slow` never answers (its request is reported on `asked`).
async fn origin(asked: tokio::sync::mpsc::UnboundedSender<String>) -> std::net::SocketAddr {
    common::raw_upstream(move |mut s| {
        let asked = asked.clone();
        async move {
            while let Some(head) = common::read_head(&mut s).await {
                let head = String::from_utf8_lossy(&head).into_owned();
                let bodiless = head.starts_with("HEAD ");
                let path = head.split_whitespace().nth(1).unwrap_or("").to_owned();
                let _ = asked.send(path.clone());
                let sent = match path.as_str() {
                    p if p.starts_with("/whole") => {
                        let mut answer =
                            format!("HTTP/1.1 200 OK\r\nContent-Length: {WHOLE}\r\n\r\n")
                                .into_bytes();
                        if !bodiless {
                            answer.extend(std::iter::repeat_n(b'w', WHOLE));
                        }
                        s.write_all(&answer).await
                    }
                    "/cut" => {
                        let mut answer =
                            b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n".to_vec();
                        answer.extend(std::iter::repeat_n(b'c', CUT_AT));
                        let _ = s.write_all(&answer).await;
                        return;
                    }
                    "/big" => {
                        let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {BIG}\r\n\r\n");
                        if s.write_all(head.as_bytes()).await.is_err() {
                            return;
                        }
                        let chunk = vec![b'b'; 64 * 1024];
                        while s.write_all(&chunk).await.is_ok() {}
                        return;
                    }
                    "/early" => {
                        // Answers at once, then reads the upload until it ends.
                        let answer = b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n0123456789";
                        let _ = s.write_all(answer).await;
                        let mut rest = [0u8; 4096];
                        while matches!(s.read(&mut rest).await, Ok(n) if n > 0) {}
                        return;
                    }
                    "/stall" => {
                        let answer = b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n0123456789";
                        let _ = s.write_all(answer).await;
                        let _ = s.read(&mut [0; 1]).await;
                        return;
                    }
                    _ => {
                        // `/slow`: no answer; done when the proxy lets go.
                        let _ = s.read(&mut [0; 1]).await;
                        return;
                    }
                };
                if sent.is_err() {
                    return;
                }
            }
        }
    })
    .await
}

/// A front door with the log captured, and one route, `route`, to [`origin`] in a cluster
/// with `extra`; the paths the origin is asked come on the receiver.
async fn front_door(
    route: &str,
    extra: &str,
) -> (
    frontdoor::server::Running,
    tokio::sync::mpsc::UnboundedReceiver<String>,
) {
    capture();
    let (asked, requests) = tokio::sync::mpsc::unbounded_channel();
    let upstream = origin(asked).await;
    let config = format!(
        "{}\n[[routes]]\nname = \"{route}\"\ncluster = \"app\"\n",
        common::cluster("app", extra, &[(upstream, "", "v1")])
    );
    (common::start(&config).await, requests)
}

async fn ask(fd: std::net::SocketAddr, method: &str, path: &str) -> TcpStream {
    let mut client = TcpStream::connect(fd).await.expect("connect");
    client
        .write_all(format!("{method} {path} HTTP/1.1\r\nHost: shop.test\r\n\r\n").as_bytes())
        .await
        .expect("request");
    client
}

/// Body bytes read until the connection closes, after the head.
async fn read_to_close(client: &mut TcpStream) -> (String, usize) {
    let mut got = Vec::new();
    let _ = client.read_to_end(&mut got).await;
    let end = got
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a head")
        + 4;
    (
        String::from_utf8_lossy(&got[..end]).into_owned(),
        got.len() - end,
    )
}

#[tokio::test]
async fn each_answer_is_logged_at_its_end_with_its_bytes_and_how_it_ended() {
    let (fd, mut requests) = front_door("shop", "body_idle_timeout = \"300ms\"").await;
    let addr = fd.http.expect("http");

    // Whole: every byte handed over, after the head.
    let mut client = ask(addr, "GET", "/whole").await;
    let answer = common::read_message(&mut client).await.expect("answer");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    drop(client);
    let line = line_for("/whole").await;
    assert_eq!(line["status"], 200);
    assert_eq!(line["route"], "shop");
    assert_eq!(line["bytes"], WHOLE);
    assert_eq!(line["end"], "complete");
    let (head_ms, total_ms) = (line["head_ms"].as_f64(), line["total_ms"].as_f64());
    assert!(head_ms.zip(total_ms).is_some_and(|(h, t)| h <= t), "{line}");

    // A `HEAD` sends no body: complete with none.
    let mut client = ask(addr, "HEAD", "/whole-head").await;
    let head = common::read_head(&mut client).await.expect("head");
    assert!(head.starts_with(b"HTTP/1.1 200"));
    let line = line_for("/whole-head").await;
    assert_eq!(
        (&line["bytes"], &line["end"]),
        (&0.into(), &"complete".into())
    );

    // The upstream breaks off: the client has what came, and the line says whose fault.
    let mut client = ask(addr, "GET", "/cut").await;
    let (head, body) = read_to_close(&mut client).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(body, CUT_AT);
    let line = line_for("/cut").await;
    assert_eq!(line["status"], 200);
    assert_eq!(line["bytes"], CUT_AT);
    assert_eq!(line["end"], "upstream_failed");

    // The upstream goes quiet inside its body for `body_idle_timeout`.
    let mut client = ask(addr, "GET", "/stall").await;
    let (_, body) = read_to_close(&mut client).await;
    assert_eq!(body, 10);
    let line = line_for("/stall").await;
    assert_eq!(line["bytes"], 10);
    assert_eq!(line["end"], "upstream_timeout");

    // The client reads a little of a 64 MiB answer and goes.
    let mut client = ask(addr, "GET", "/big").await;
    let mut some = vec![0u8; 256 * 1024];
    client.read_exact(&mut some).await.expect("some of it");
    drop(client);
    let line = line_for("/big").await;
    assert_eq!(line["status"], 200);
    assert_eq!(line["end"], "client_gone");
    let bytes = line["bytes"].as_u64().expect("bytes");
    assert!(
        bytes > 0 && bytes < BIG,
        "{bytes} of {BIG} bytes handed over"
    );

    // The client goes before the upstream answers: nginx's 499, with the route it asked.
    let client = ask(addr, "GET", "/slow").await;
    while requests.recv().await.expect("the origin is asked") != "/slow" {}
    drop(client);
    let line = line_for("/slow").await;
    assert_eq!(line["status"], 499);
    assert_eq!(line["end"], "client_gone");
    assert_eq!(line["route"], "shop");
    assert_eq!(line["bytes"], 0);

    // The metrics count the answers that did not reach their client whole, by who cut them:
    // `/big` and `/slow` by the client, `/cut` and `/stall` by the upstream.
    let metrics = common::metrics_with(&fd, &[]).await;
    let aborted = |by: &str| -> Option<f64> {
        metrics
            .lines()
            .find(|l| {
                l.starts_with("frontdoor_aborted_total{")
                    && l.contains("route=\"shop\"")
                    && l.contains(&format!("by=\"{by}\""))
            })?
            .rsplit(' ')
            .next()?
            .parse()
            .ok()
    };
    assert_eq!(aborted("client"), Some(2.0), "{metrics}");
    assert_eq!(aborted("upstream"), Some(2.0), "{metrics}");
}

/// HTTP/2: a stream's line is written at its end too.
#[tokio::test]
async fn an_h2_stream_is_logged_at_its_end() {
    capture();
    let (asked, _requests) = tokio::sync::mpsc::unbounded_channel();
    let upstream = origin(asked).await;
    let fd = common::start(&common::one_route("", &[(upstream, "", "v1")])).await;
    let r = loadtest::Client::h2c()
        .get(&common::url(&fd, "/whole-h2"))
        .await
        .expect("answer");
    assert_eq!((r.status.as_u16(), r.body.len()), (200, WHOLE));
    let line = line_for("/whole-h2").await;
    assert_eq!(line["protocol"], "HTTP/2.0");
    assert_eq!(line["bytes"], WHOLE);
    assert_eq!(line["end"], "complete");
}

/// A client whose upload breaks (here a malformed chunk) after the upstream began its answer:
/// the answer is cut, and that is the client's doing. The line says `client_gone`, the abort
/// is the client's, and the endpoint is not failed for it (one failure would eject it).
#[tokio::test]
async fn an_upload_that_breaks_mid_answer_is_the_clients_doing() {
    let ejects_at_once = "retries = { attempts = 0 }\noutlier = { consecutive_failures = 1, ejection_time = \"1h\" }";
    let (fd, _requests) = front_door("upload", ejects_at_once).await;
    let addr = fd.http.expect("http");
    let mut client = TcpStream::connect(addr).await.expect("connect");
    client
        .write_all(
            b"POST /early HTTP/1.1\r\nHost: shop.test\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
        )
        .await
        .expect("head and a chunk");
    let head = common::read_head(&mut client)
        .await
        .expect("the answer's head");
    assert!(head.starts_with(b"HTTP/1.1 200"), "{head:?}");
    client.write_all(b"zz\r\n").await.expect("a bad chunk");
    let _ = client.read_to_end(&mut Vec::new()).await;
    let line = line_for("/early").await;
    assert_eq!(line["status"], 200);
    assert_eq!(line["end"], "client_gone", "{line}");

    // The endpoint still serves: not ejected.
    let mut client = ask(addr, "GET", "/whole-after-upload").await;
    let answer = common::read_message(&mut client).await.expect("answer");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let metrics = common::metrics_with(&fd, &[]).await;
    assert!(
        metrics.contains("frontdoor_upstream_ejections_total{cluster=\"app\"} 0\n"),
        "{metrics}"
    );
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("frontdoor_aborted_total{")
                && l.contains("route=\"upload\"")
                && l.contains("by=\"client\"")
                && l.ends_with(" 1")),
        "{metrics}"
    );
}

/// gRPC calls: the status an upstream gave a call (in its trailers, or a trailers-only head)
/// is in its line, and those a server failed under a 200 are counted by route in
/// `frontdoor_grpc_failures_total`; a caller's mistake (NOT_FOUND) and OK are not.
#[tokio::test]
async fn grpc_statuses_are_logged_and_server_failures_counted() {
    capture();
    let mut config = String::new();
    for (name, code, trailers_only) in [
        ("unavailable", "14", false),
        ("internal", "13", true),
        ("ok", "0", false),
        ("not-found", "5", false),
    ] {
        let upstream = common::grpc_upstream(code, "v1", trailers_only).await;
        config.push_str(&common::cluster(
            name,
            "protocol = \"h2\"",
            &[(upstream, "", "v1")],
        ));
        config.push_str(&format!(
            "\n[[routes]]\nname = \"{name}\"\npath_prefix = \"/{name}\"\ncluster = \"{name}\"\n"
        ));
    }
    let fd = common::start(&config).await;
    let client = loadtest::Client::h2c();
    for (name, code) in [
        ("unavailable", 14),
        ("internal", 13),
        ("ok", 0),
        ("not-found", 5),
    ] {
        let path = format!("/{name}/echo.Echo/Say");
        let call = http::Request::post(common::url(&fd, &path))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(http_body_util::Full::new(bytes::Bytes::from_static(
                b"\0\0\0\0\x02hi",
            )))
            .expect("call");
        let answer = client.send(call).await.expect("answer");
        assert_eq!(answer.status, 200, "{name}");
        let line = line_for(&path).await;
        assert_eq!(line["status"], 200, "{line}");
        assert_eq!(line["grpc_status"], code, "{line}");
        assert_eq!(line["end"], "complete", "{line}");
    }
    let metrics = common::metrics_with(&fd, &[]).await;
    let failures = |route: &str| {
        metrics
            .lines()
            .find(|l| {
                l.starts_with("frontdoor_grpc_failures_total{")
                    && l.contains(&format!("route=\"{route}\""))
            })
            .and_then(|l| l.rsplit(' ').next())
            .map(str::to_owned)
    };
    assert_eq!(failures("unavailable").as_deref(), Some("1"), "{metrics}");
    assert_eq!(failures("internal").as_deref(), Some("1"), "{metrics}");
    assert_eq!(failures("ok").as_deref(), Some("0"), "{metrics}");
    assert_eq!(failures("not-found").as_deref(), Some("0"), "{metrics}");
}
