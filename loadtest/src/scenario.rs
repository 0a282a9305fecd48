//! Scenarios: what traffic to send and what to expect, from a TOML file.
//!
//! ```toml
//! duration = "30s"
//! rate = 500                 # open model: arrivals per second (omit for closed model)
//! # concurrency = 32         # closed model: workers sending back to back (with `rate`: the
//!                            # open model's connections; default one per 2,000/s, 8..256)
//! protocol = "http1"         # or "h2" (h2c prior knowledge)
//! users = 10000              # distinct user keys (sticky cookie fd-uid=lt-N)
//! country_header = "x-client-country"
//! [countries]                # share of users per country
//! US = 60
//! DE = 30
//! SG = 10
//! [[paths]]
//! path = "/"
//! weight = 9
//! [[paths]]
//! path = "/api/orders"
//! method = "POST"
//! body = "{\"item\": 1}"
//! weight = 1
//! [expect.regions]           # countries whose requests may only be served from these regions
//! DE = ["europe-west1"]
//! [expect]
//! max_error_rate = 0.01
//! ```

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

/// A scenario file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    #[serde(default = "default_duration")]
    pub duration: String,
    /// Open model: arrivals per second.
    pub rate: Option<f64>,
    /// Open model, stepped: `[[100, "10s"], [500, "20s"]]` (rate, how long).
    #[serde(default)]
    pub steps: Vec<(f64, String)>,
    /// Closed model: workers.
    pub concurrency: Option<usize>,
    #[serde(default = "default_protocol")]
    pub protocol: String,
    #[serde(default = "default_users")]
    pub users: u32,
    #[serde(default = "default_country_header")]
    pub country_header: String,
    #[serde(default)]
    pub countries: BTreeMap<String, f64>,
    #[serde(default)]
    pub paths: Vec<PathSpec>,
    #[serde(default)]
    pub expect: Expect,
}

fn default_duration() -> String {
    "10s".into()
}
fn default_protocol() -> String {
    "http1".into()
}
fn default_users() -> u32 {
    1000
}
fn default_country_header() -> String {
    "x-client-country".into()
}

/// One request shape and its share of the traffic.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PathSpec {
    pub path: String,
    #[serde(default = "default_method")]
    pub method: String,
    pub body: Option<String>,
    #[serde(default = "one")]
    pub weight: f64,
}

fn default_method() -> String {
    "GET".into()
}
fn one() -> f64 {
    1.0
}

/// Assertions checked while the scenario runs.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    /// Country → the only regions allowed to serve it (a response from elsewhere is a leak).
    #[serde(default)]
    pub regions: BTreeMap<String, Vec<String>>,
    /// Largest tolerated share of failed requests (5xx other than residency refusals, or
    /// transport errors). Default: no limit.
    pub max_error_rate: Option<f64>,
    /// Largest tolerated p99 latency, e.g. `"500ms"`.
    pub max_p99: Option<String>,
    /// Fail on any user who saw two versions (no rollout change expected during the run).
    #[serde(default)]
    pub sticky: bool,
}

/// How load is generated.
#[derive(Debug, Clone, PartialEq)]
pub enum Model {
    /// Arrivals on a schedule: (rate per second, for how long) segments.
    Open(Vec<(f64, Duration)>),
    /// `n` workers, each sending its next request when the last one finished.
    Closed { workers: usize, duration: Duration },
}

/// Parses `"250ms"`, `"10s"`, `"2m"`.
pub fn duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let (num, mult) = if let Some(n) = t.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = t.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = t.strip_suffix('m') {
        (n, 60.0)
    } else {
        return Err(format!("{text:?} needs a unit (ms, s, m)"));
    };
    let v: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("{text:?} is not a duration"))?;
    if !(0.0..=86_400.0).contains(&(v * mult)) {
        return Err(format!("{text:?} is out of range"));
    }
    Ok(Duration::from_secs_f64(v * mult))
}

impl Scenario {
    pub fn parse(text: &str) -> Result<Scenario, String> {
        let s: Scenario = toml::from_str(text).map_err(|e| e.to_string())?;
        s.validate()?;
        Ok(s)
    }

    fn validate(&self) -> Result<(), String> {
        let mut errors = Vec::new();
        if let Err(e) = duration(&self.duration) {
            errors.push(format!("duration: {e}"));
        }
        if !matches!(self.protocol.as_str(), "http1" | "h2") {
            errors.push(format!(
                "protocol: {:?} is not \"http1\" or \"h2\"",
                self.protocol
            ));
        }
        if self.users == 0 {
            errors.push("users: must be at least 1".into());
        }
        if self.rate.is_some_and(|r| !(r > 0.0 && r.is_finite())) {
            errors.push("rate: must be a positive number".into());
        }
        if self.concurrency == Some(0) {
            errors.push("concurrency: must be at least 1".into());
        }
        for (i, (r, d)) in self.steps.iter().enumerate() {
            if !r.is_finite() || *r <= 0.0 {
                errors.push(format!("steps[{i}]: rate must be positive"));
            }
            if let Err(e) = duration(d) {
                errors.push(format!("steps[{i}]: {e}"));
            }
        }
        for (i, p) in self.paths.iter().enumerate() {
            if !p.path.starts_with('/') {
                errors.push(format!("paths[{i}].path: must start with '/'"));
            }
            if http::Method::from_bytes(p.method.as_bytes()).is_err() {
                errors.push(format!("paths[{i}].method: {:?} is not a method", p.method));
            }
            if !p.weight.is_finite() || p.weight <= 0.0 {
                errors.push(format!("paths[{i}].weight: must be positive"));
            }
        }
        if self.countries.values().any(|w| !w.is_finite() || *w < 0.0) {
            errors.push("countries: shares must be non-negative".into());
        }
        if let Some(p) = &self.expect.max_p99
            && let Err(e) = duration(p)
        {
            errors.push(format!("expect.max_p99: {e}"));
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors.join("\n"))
        }
    }

    /// The load model, with `rate`/`duration` overrides from the command line.
    pub fn model(&self, rate: Option<f64>, dur: Option<Duration>) -> Model {
        let d = dur.unwrap_or_else(|| duration(&self.duration).unwrap_or(Duration::from_secs(10)));
        if let Some(workers) = self
            .concurrency
            .filter(|_| rate.is_none() && self.rate.is_none())
        {
            return Model::Closed {
                workers,
                duration: d,
            };
        }
        if rate.is_none() && !self.steps.is_empty() {
            return Model::Open(
                self.steps
                    .iter()
                    .map(|(r, t)| (*r, duration(t).unwrap_or(Duration::from_secs(1))))
                    .collect(),
            );
        }
        Model::Open(vec![(rate.or(self.rate).unwrap_or(100.0), d)])
    }

    /// The path specs, with a default `GET /` when none are given.
    pub fn paths(&self) -> Vec<PathSpec> {
        if self.paths.is_empty() {
            vec![PathSpec {
                path: "/".into(),
                method: "GET".into(),
                body: None,
                weight: 1.0,
            }]
        } else {
            self.paths.clone()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_validates() {
        let s = Scenario::parse(
            r#"
duration = "5s"
rate = 200
users = 500
[countries]
US = 60
DE = 30
SG = 10
[[paths]]
path = "/api"
method = "POST"
body = "x"
[expect.regions]
DE = ["europe-west1"]
"#,
        )
        .expect("valid");
        assert_eq!(
            s.model(None, None),
            Model::Open(vec![(200.0, Duration::from_secs(5))])
        );
        assert_eq!(
            s.model(Some(50.0), Some(Duration::from_secs(2))),
            Model::Open(vec![(50.0, Duration::from_secs(2))])
        );
        assert_eq!(s.expect.regions["DE"], vec!["europe-west1".to_string()]);
        let closed = Scenario::parse("concurrency = 8\nduration = \"1s\"").expect("valid");
        assert_eq!(
            closed.model(None, None),
            Model::Closed {
                workers: 8,
                duration: Duration::from_secs(1)
            }
        );
        let err = Scenario::parse(
            "protocol = \"h3\"\nusers = 0\n[[paths]]\npath = \"x\"\nmethod = \"G T\"\n",
        )
        .expect_err("invalid");
        assert_eq!(err.lines().count(), 4, "{err}");
        assert!(
            Scenario::parse("rat = 5").is_err(),
            "unknown keys are errors"
        );
    }
}
