//! TLS and mutual TLS to upstreams: a real rustls origin that requires a client certificate.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use common::{start, url};
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use loadtest::Client;
use rustls_pki_types::pem::PemObject;

/// TLS for an origin with `server`'s certificate; with `client_ca`, it requires a client
/// certificate issued by it.
fn acceptor(server: &certs::dev::DevCert, client_ca: Option<&str>) -> tokio_rustls::TlsAcceptor {
    let chain: Vec<rustls_pki_types::CertificateDer<'static>> =
        rustls_pki_types::CertificateDer::pem_slice_iter(server.cert_pem.as_bytes())
            .collect::<Result<_, _>>()
            .expect("chain");
    let key =
        rustls_pki_types::PrivateKeyDer::from_pem_slice(server.key_pem.as_bytes()).expect("key");
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .expect("versions");
    let builder = match client_ca {
        Some(pem) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in rustls_pki_types::CertificateDer::pem_slice_iter(pem.as_bytes()) {
                roots.add(c.expect("pem")).expect("root");
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .expect("verifier");
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(chain, key).expect("cert");
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    tokio_rustls::TlsAcceptor::from(Arc::new(config))
}

/// An HTTPS origin for `origin.internal`; with `client_ca`, it requires a client certificate
/// issued by it.
async fn tls_origin(server: &certs::dev::DevCert, client_ca: Option<&str>) -> SocketAddr {
    let acceptor = acceptor(server, client_ca);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let client_cert = tls.get_ref().1.peer_certificates().is_some();
                let service =
                    hyper::service::service_fn(move |_req: Request<Incoming>| async move {
                        let body = format!("tls ok, client certificate: {client_cert}");
                        Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from(
                            body,
                        ))))
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    addr
}

fn write(dir: &std::path::Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).expect("write");
    p.to_string_lossy().into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_to_an_upstream_that_requires_it() {
    certs::install_crypto_provider();
    let dir = std::env::temp_dir().join(format!("frontdoor-upstream-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let server_ca = certs::dev::DevCa::new("upstream server CA").expect("ca");
    let client_ca = certs::dev::DevCa::new("upstream client CA").expect("ca");
    let other_ca = certs::dev::DevCa::new("some other CA").expect("ca");
    let server = server_ca.issue(&["origin.internal"]).expect("server leaf");
    let client = client_ca
        .issue(&["frontdoor.internal"])
        .expect("client leaf");
    let mtls_origin = tls_origin(&server, Some(&client_ca.cert_pem)).await;
    let ca = write(&dir, "server-ca.pem", &server_ca.cert_pem);
    let wrong_ca = write(&dir, "other-ca.pem", &other_ca.cert_pem);
    let cert = write(&dir, "client.pem", &client.cert_pem);
    let key = write(&dir, "client.key", &client.key_pem);

    let config = |tls: &str| {
        format!(
            "[clusters.app]\nendpoints = [{{ address = \"{mtls_origin}\" }}]\ntls = {tls}\n[[routes]]\ncluster = \"app\"\n"
        )
    };
    // With the client certificate: the origin sees it and answers.
    let fd = start(&config(&format!(
        "{{ ca = \"{ca}\", server_name = \"origin.internal\", cert = \"{cert}\", key = \"{key}\" }}"
    )))
    .await;
    let r = Client::http1().get(&url(&fd, "/")).await.expect("response");
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.text(), "tls ok, client certificate: true");
    fd.shutdown().await;

    // Without it, or trusting the wrong CA, or the wrong name: the handshake fails → 502.
    for tls in [
        format!("{{ ca = \"{ca}\", server_name = \"origin.internal\" }}"),
        format!(
            "{{ ca = \"{wrong_ca}\", server_name = \"origin.internal\", cert = \"{cert}\", key = \"{key}\" }}"
        ),
        format!(
            "{{ ca = \"{ca}\", server_name = \"impostor.internal\", cert = \"{cert}\", key = \"{key}\" }}"
        ),
    ] {
        let fd = start(&config(&tls)).await;
        let r = Client::http1().get(&url(&fd, "/")).await.expect("response");
        assert_eq!(r.status, StatusCode::BAD_GATEWAY, "{tls}: {}", r.text());
        fd.shutdown().await;
    }

    // A CA file that does not exist rejects the config, naming the cluster and the file.
    let missing = dir.join("missing.pem");
    let errors = frontdoor::state::Proxy::start(
        frontdoor::state::ConfigSource::Inline(config(&format!(
            "{{ ca = \"{}\" }}",
            missing.display()
        ))),
        frontdoor::state::ProxyOptions::default(),
    )
    .await
    .expect_err("missing CA rejected");
    assert!(
        errors
            .iter()
            .any(|e| e.contains("clusters.app.tls") && e.contains("missing.pem")),
        "{errors:?}"
    );
    // cert without key is a validation error.
    let text = config(&format!("{{ ca = \"{ca}\", cert = \"{cert}\" }}"));
    let e = routes::load(&text).expect_err("cert without key");
    assert!(
        e.to_string()
            .contains("clusters.app.tls: cert and key go together"),
        "{e}"
    );
    std::fs::remove_dir_all(dir).ok();
}

/// Over TLS as over plain TCP: an origin that refuses an upload part way through and resets
/// the connection while the front door is still sending gets its answer to the client (the
/// records before the reset are read; the write that met it is held back), every time.
#[tokio::test]
async fn an_answer_before_a_reset_reaches_the_client_over_tls() {
    certs::install_crypto_provider();
    let dir =
        std::env::temp_dir().join(format!("frontdoor-upstream-tls-413-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let server_ca = certs::dev::DevCa::new("upstream server CA").expect("ca");
    let server = server_ca.issue(&["origin.internal"]).expect("server leaf");
    let ca = write(&dir, "server-ca.pem", &server_ca.cert_pem);
    let acceptor = acceptor(&server, None);
    let origin = common::raw_upstream(move |tcp| {
        let acceptor = acceptor.clone();
        async move {
            let Ok(mut tls) = acceptor.accept(tcp).await else {
                return;
            };
            if common::refuse_part_way(&mut tls, false).await {
                tls.get_ref().0.set_zero_linger().expect("SO_LINGER");
            }
        }
    })
    .await;
    let fd = start(&format!(
        "[clusters.app]\nendpoints = [{{ address = \"{origin}\" }}]\ntls = {{ ca = \"{ca}\", server_name = \"origin.internal\" }}\n[[routes]]\ncluster = \"app\"\n"
    ))
    .await;
    common::every_upload_gets_the_413(fd.http.expect("http")).await;
    std::fs::remove_dir_all(dir).ok();
}
