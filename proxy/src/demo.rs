//! The demo: in-process origins for every (region, version) endpoint the demo config lists, so
//! `frontdoor demo` runs the whole picture in one process. Faults are set through the admin API.

use std::collections::BTreeMap;

use loadtest::{FaultSpec, Origin, OriginHandle};
use routes::{Address, Snapshot};
use serde_json::{Value, json};

/// The demo config, embedded so the demo needs no files (it is `deploy/demo.toml`).
pub const DEMO_CONFIG: &str = include_str!("../../deploy/demo.toml");

/// The running demo origins.
#[derive(Debug, Default)]
pub struct DemoOrigins {
    origins: Vec<OriginHandle>,
}

impl DemoOrigins {
    /// Starts one origin per static endpoint of every cluster, on the endpoint's own address,
    /// labelled with its region and version.
    pub async fn start(snapshot: &Snapshot) -> std::io::Result<DemoOrigins> {
        let mut origins = Vec::new();
        let mut started = std::collections::HashSet::new();
        for cluster in &snapshot.clusters {
            for e in &cluster.endpoints {
                let Address::Ip(addr) = e.address else {
                    continue;
                };
                if !started.insert(addr) {
                    continue;
                }
                let region = e
                    .region
                    .map(|r| snapshot.region(r).name.clone())
                    .unwrap_or_else(|| "local".into());
                let version = e.version.clone().unwrap_or_else(|| "stable".into());
                let origin = Origin::builder()
                    .region(&region)
                    .version(&version)
                    .addr(addr)
                    .start()
                    .await
                    .map_err(|err| {
                        std::io::Error::new(
                            err.kind(),
                            format!("demo origin {region}/{version} on {addr}: {err}"),
                        )
                    })?;
                origins.push(origin);
            }
        }
        Ok(DemoOrigins { origins })
    }

    /// Wraps origins that are already running (tests).
    pub fn from_origins(origins: Vec<OriginHandle>) -> DemoOrigins {
        DemoOrigins { origins }
    }

    /// Applies a fault to every origin in this region (`*`: every region), with this version
    /// when given; returns how many.
    pub fn set(&self, region: &str, version: Option<&str>, spec: FaultSpec) -> usize {
        let mut n = 0;
        for o in self.origins.iter().filter(|o| {
            (region == "*" || o.region == region) && version.is_none_or(|v| o.version == v)
        }) {
            o.faults.set(spec);
            n += 1;
        }
        n
    }

    pub fn list(&self) -> Value {
        let mut by_key: BTreeMap<String, Value> = BTreeMap::new();
        for o in &self.origins {
            by_key.insert(
                format!("{}/{}", o.region, o.version),
                json!({ "address": o.addr.to_string(), "fault": o.faults.get(), "requests": o.faults.requests() }),
            );
        }
        json!(by_key)
    }
}
