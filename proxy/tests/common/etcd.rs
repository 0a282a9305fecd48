//! A real etcd (Debian `etcd-server`) on free loopback ports with a temporary data directory
//! (tmpfs when there is one), stopped by PID.

use std::process::{Child, Command, Stdio};

use http::StatusCode;
use loadtest::Client;

use super::{eventually, free_port};

/// A real etcd on loopback.
pub struct Etcd {
    child: Option<Child>,
    dir: std::path::PathBuf,
    client_port: u16,
    peer_port: u16,
}

impl Etcd {
    pub async fn start() -> Etcd {
        let base = if std::path::Path::new("/dev/shm").is_dir() {
            std::path::PathBuf::from("/dev/shm")
        } else {
            std::env::temp_dir()
        };
        let dir = base.join(format!(
            "frontdoor-etcd-{}-{}",
            std::process::id(),
            free_port()
        ));
        let mut e = Etcd {
            child: None,
            dir,
            client_port: free_port(),
            peer_port: free_port(),
        };
        e.spawn().await;
        e
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    pub async fn spawn(&mut self) {
        let (c, p) = (self.client_port, self.peer_port);
        let child = Command::new("etcd")
            .args(["--name", "t", "--data-dir"])
            .arg(&self.dir)
            .args([
                "--listen-client-urls",
                &format!("http://127.0.0.1:{c}"),
                "--advertise-client-urls",
                &format!("http://127.0.0.1:{c}"),
            ])
            .args([
                "--listen-peer-urls",
                &format!("http://127.0.0.1:{p}"),
                "--initial-advertise-peer-urls",
                &format!("http://127.0.0.1:{p}"),
            ])
            .args([
                "--initial-cluster",
                &format!("t=http://127.0.0.1:{p}"),
                "--initial-cluster-state",
                "new",
            ])
            .args([
                "--listen-metrics-urls",
                &format!("http://127.0.0.1:{}", free_port()),
                "--log-level",
                "error",
                "--logger",
                "zap",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("etcd is installed (Debian etcd-server; .ci/run installs it)");
        self.child = Some(child);
        let url = format!("{}/health", self.url());
        eventually("etcd is healthy", || {
            let url = url.clone();
            async move {
                Client::http1()
                    .get(&url)
                    .await
                    .is_ok_and(|r| r.status == StatusCode::OK)
            }
        })
        .await;
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
            let _ = c.wait();
        }
    }

    pub async fn put(&self, key: &str, value: &str) {
        let mut client = etcd_client::Client::connect([self.url()], None)
            .await
            .expect("connect");
        client.put(key, value, None).await.expect("put");
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
