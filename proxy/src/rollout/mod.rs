//! rollout: which version serves a request (sticky canary / blue-green split, header
//! override), the per-route × version windows, the controller that judges the candidate and
//! rolls it back or forward, and the operator actions (shift, promote, rollback, pause,
//! resume) with their audit trail.
//!
//! Run-time rollout state is one immutable [`RolloutTable`] behind an `ArcSwap` (a second
//! snapshot, per DESIGN.md): every change — operator or controller — builds a new table and
//! swaps it in one store, under one writer lock. A request reads the table once.

pub mod mirror;
mod window;

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use routes::Snapshot;
use routes::rollout::{self as model, Rollout, RolloutMode, Verdict, WindowStats};
use serde::Serialize;

pub use window::Window;

use crate::clock;
use crate::telemetry;

/// Where a rollout stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Judged continuously; advances through the steps while green.
    Progressing,
    /// Judged (and rolled back on breach) but not advanced.
    Paused,
    /// At 100%, judged for the post-promotion watch; reverts on breach.
    Promoted,
    /// Promotion watch passed: the candidate is the new normal.
    Complete,
    /// Weight 0 after a breach or an operator rollback; stays until an operator acts.
    RolledBack,
}

/// The state of one route's rollout.
#[derive(Debug, Clone)]
pub struct RolloutState {
    pub config: Rollout,
    /// `config.override_header`, parsed once: a lookup by text parses the name each time.
    /// (`None` only for a name the config's validation would have refused.)
    pub override_name: Option<http::HeaderName>,
    /// Percent of users on the candidate.
    pub weight: f64,
    pub phase: Phase,
    /// Clock ms when the current weight was set (for step holds and watches).
    pub since_ms: u64,
    /// Why the last rollback happened, with the numbers.
    pub reason: Option<String>,
}

/// Per route: state plus its windows and the latest verdict.
#[derive(Debug)]
pub struct RouteRollout {
    pub state: RolloutState,
    pub windows: Arc<Windows>,
    pub gate: Arc<Mutex<GateView>>,
}

/// A route's windows, by version (stable = 0, candidate = 1): over all regions (what the gates
/// judge) and per region (what `status` shows).
#[derive(Debug)]
pub struct Windows {
    pub all: [Window; 2],
    /// By region index of the snapshot: (region name, windows).
    pub regions: Vec<(String, [Window; 2])>,
    /// The route's copies to the candidate (`mirror_percent`), which feed these windows.
    pub mirror: mirror::Mirror,
}

impl Windows {
    fn new(len: std::time::Duration, regions: &[String]) -> Windows {
        Windows {
            all: [Window::new(len), Window::new(len)],
            regions: regions
                .iter()
                .map(|r| (r.clone(), [Window::new(len), Window::new(len)]))
                .collect(),
            mirror: mirror::Mirror::default(),
        }
    }

    /// Records the exchange of `version` that ended with `outcome` at `answered`, its head
    /// `latency` after it was sent: a failure when the upstream failed (a 5xx, or no answer for
    /// a reason of its own: not the request's, nor residency's).
    #[inline]
    pub fn judge(
        &self,
        version: Version,
        outcome: &Result<crate::forward::Forwarded, crate::forward::ForwardError>,
        latency: std::time::Duration,
        answered: tokio::time::Instant,
    ) {
        use crate::respond::ProxyError;
        let (failed, region) = match outcome {
            Ok(f) => (f.failed, f.member.region),
            Err(e) => (
                !matches!(
                    e.error,
                    ProxyError::ResidencyRefused { .. }
                        | ProxyError::BadRequest(_)
                        | ProxyError::ClientTimeout
                ),
                e.member.as_ref().and_then(|m| m.region),
            ),
        };
        self.record(version, region, failed, latency, clock::ms_at(answered));
    }

    /// Records one exchange of `version`, served from `region` (when known), at `now`
    /// ([`clock::now_ms`] as the caller read it).
    pub fn record(
        &self,
        version: Version,
        region: Option<routes::RegionId>,
        error: bool,
        latency: std::time::Duration,
        now: u64,
    ) {
        self.each(version, region, |w| w.record(now, error, latency));
    }

    /// Counts an error for an exchange of `version` recorded earlier, whose answer broke off
    /// after its head (see [`Window::broke`]).
    pub fn broke(&self, version: Version, region: Option<routes::RegionId>, now: u64) {
        self.each(version, region, |w| w.broke(now));
    }

    /// `change` on `version`'s window over all regions, then on its window for `region`.
    fn each(&self, version: Version, region: Option<routes::RegionId>, change: impl Fn(&Window)) {
        change(&self.all[version as usize]);
        if let Some((_, w)) = region.and_then(|r| self.regions.get(r.0)) {
            change(&w[version as usize]);
        }
    }
}

/// An answer's exchange in a rollout's analysis: told when the upstream's body breaks off
/// after the head (an upstream reset, close or stall past `body_idle_timeout`), which the
/// analysis counts as the version's error, unless the client's upload broke the exchange
/// first (see [`crate::forward::Watch`]). A candidate that crashes mid-answer is failing its
/// users as surely as one answering 503.
#[derive(Debug)]
pub struct Judged {
    pub windows: Arc<Windows>,
    pub version: Version,
    pub region: Option<routes::RegionId>,
}

impl Judged {
    pub fn broke(self) {
        self.windows
            .broke(self.version, self.region, crate::clock::now_ms());
    }
}

/// The controller's latest judgement, for status and for refusing shifts while red.
#[derive(Debug, Clone, Default, Serialize)]
pub struct GateView {
    /// `green`, `red`, `inconclusive`, or `idle` (not judged: weight 0 or complete).
    pub state: String,
    pub detail: String,
    pub candidate: Option<StatsView>,
    pub stable: Option<StatsView>,
    /// Per region and version, where there was traffic in the window.
    pub regions: Vec<RegionView>,
}

/// One region × version of a rollout, for status.
#[derive(Debug, Clone, Serialize)]
pub struct RegionView {
    pub region: String,
    pub version: &'static str,
    pub stats: StatsView,
}

#[derive(Debug, Clone, Serialize)]
pub struct StatsView {
    pub requests: u64,
    pub rps: f64,
    pub error_rate: f64,
    pub p95_ms: Option<f64>,
    pub p99_ms: Option<f64>,
}

impl StatsView {
    fn of(s: &WindowStats, window_secs: f64) -> StatsView {
        StatsView {
            requests: s.requests,
            rps: s.requests as f64 / window_secs.max(1.0),
            error_rate: s.error_rate(),
            p95_ms: s.p95.map(|d| d.as_secs_f64() * 1000.0),
            p99_ms: s.p99.map(|d| d.as_secs_f64() * 1000.0),
        }
    }
}

/// Every route's rollout, by route name.
#[derive(Debug, Default)]
pub struct RolloutTable {
    pub by_route: routes::LookupMap<String, Arc<RouteRollout>>,
}

/// One audited change.
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    pub at_unix_ms: u64,
    pub route: String,
    pub action: String,
    pub actor: String,
    pub reason: String,
    pub weight_before: f64,
    pub weight_after: f64,
}

/// A local change, for the fleet to publish.
#[derive(Debug, Clone)]
pub struct Change {
    pub route: String,
    pub weight: f64,
    pub phase: Phase,
    pub reason: Option<String>,
    pub action: String,
    pub actor: String,
}

/// The process's rollouts: the table, the writer lock, the event log.
#[derive(Debug, Default)]
pub struct Rollouts {
    table: ArcSwap<RolloutTable>,
    writer: Mutex<()>,
    events: Mutex<VecDeque<Event>>,
    /// Where local changes go (fleet mode).
    changes: Mutex<Option<tokio::sync::mpsc::UnboundedSender<Change>>>,
}

const MAX_EVENTS: usize = 1000;

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// What an operator asks for.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    Shift { weight: f64, force: bool },
    Promote,
    Rollback,
    Pause,
    Resume,
}

/// Why an operator action was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ActionError {
    NoSuchRollout(String),
    /// The route must be named: zero or several rollouts exist.
    Ambiguous(Vec<String>),
    Invalid(String),
    /// Gates are red: shifting forward needs `force` and a reason.
    GatesRed(String),
}

impl std::fmt::Display for ActionError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ActionError::NoSuchRollout(r) => write!(f, "route {r:?} has no rollout"),
            ActionError::Ambiguous(names) if names.is_empty() => {
                write!(f, "no route has a rollout")
            }
            ActionError::Ambiguous(names) => write!(
                f,
                "several rollouts ({}): name one with --route",
                names.join(", ")
            ),
            ActionError::Invalid(why) => f.write_str(why),
            ActionError::GatesRed(why) => write!(
                f,
                "gates are red ({why}); use --force with --reason to shift anyway"
            ),
        }
    }
}

impl Rollouts {
    pub fn table(&self) -> Arc<RolloutTable> {
        self.table.load_full()
    }

    /// Brings the table in line with a (new) snapshot: rollouts whose route and candidate are
    /// unchanged keep their state and windows; new ones start at their configured weight.
    pub fn sync(&self, snapshot: &Snapshot) {
        let _w = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let old = self.table.load_full();
        let now = clock::now_ms();
        let mut by_route = routes::LookupMap::default();
        let region_names: Vec<String> = snapshot.regions.iter().map(|r| r.name.clone()).collect();
        for route in &snapshot.routes {
            let Some(cfg) = &route.rollout else { continue };
            let same = |s: &RolloutState| {
                s.config.candidate_version == cfg.candidate_version
                    && snapshot.cluster(cfg.candidate_cluster).name
                        == snapshot_cluster_name(s, snapshot)
            };
            let entry = match old.by_route.get(&route.name) {
                Some(prev) if same(&prev.state) => {
                    let mut state = prev.state.clone();
                    state.config = cfg.clone();
                    state.override_name = override_name(cfg);
                    let regions_same = prev
                        .windows
                        .regions
                        .iter()
                        .map(|(n, _)| n)
                        .eq(region_names.iter());
                    RouteRollout {
                        state,
                        windows: if regions_same {
                            Arc::clone(&prev.windows)
                        } else {
                            Arc::new(Windows::new(cfg.gates.window, &region_names))
                        },
                        gate: Arc::clone(&prev.gate),
                    }
                }
                _ => RouteRollout {
                    state: RolloutState {
                        config: cfg.clone(),
                        override_name: override_name(cfg),
                        weight: cfg.initial_weight,
                        phase: Phase::Progressing,
                        since_ms: now,
                        reason: None,
                    },
                    windows: Arc::new(Windows::new(cfg.gates.window, &region_names)),
                    gate: Arc::new(Mutex::new(GateView {
                        state: "idle".into(),
                        ..Default::default()
                    })),
                },
            };
            set_weight_gauge(&route.name, entry.state.weight);
            by_route.insert(route.name.clone(), Arc::new(entry));
        }
        self.table.store(Arc::new(RolloutTable { by_route }));
    }

    /// Applies an operator action. `route` may be omitted when exactly one rollout exists.
    pub fn act(
        &self,
        route: Option<&str>,
        action: Action,
        actor: &str,
        reason: &str,
    ) -> Result<Event, ActionError> {
        let _w = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let table = self.table.load_full();
        let name = match route {
            Some(r) => r.to_string(),
            None => {
                let names: Vec<String> = table.by_route.keys().cloned().collect();
                match names.as_slice() {
                    [one] => one.clone(),
                    _ => return Err(ActionError::Ambiguous(names)),
                }
            }
        };
        let current = table
            .by_route
            .get(&name)
            .ok_or_else(|| ActionError::NoSuchRollout(name.clone()))?;
        let mut state = current.state.clone();
        let before = state.weight;
        let now = clock::now_ms();
        let label = match &action {
            Action::Shift { weight, force } => {
                if !(0.0..=100.0).contains(weight) || !weight.is_finite() {
                    return Err(ActionError::Invalid(format!(
                        "weight must be 0..=100, got {weight}"
                    )));
                }
                if state.config.mode == RolloutMode::BlueGreen && *weight != 0.0 && *weight != 100.0
                {
                    return Err(ActionError::Invalid(
                        "blue-green switches all at once: 0% or 100%".into(),
                    ));
                }
                let gate = current.gate.lock().map(|g| g.clone()).unwrap_or_default();
                let forced = *force && !reason.trim().is_empty();
                if *weight > before && gate.state == "red" && !forced {
                    return Err(ActionError::GatesRed(gate.detail));
                }
                state.weight = *weight;
                state.phase = if *weight >= 100.0 {
                    Phase::Promoted
                } else {
                    Phase::Progressing
                };
                state.reason = None;
                "shift"
            }
            Action::Promote => {
                state.weight = 100.0;
                state.phase = Phase::Promoted;
                state.reason = None;
                "promote"
            }
            Action::Rollback => {
                state.weight = 0.0;
                state.phase = Phase::RolledBack;
                state.reason = Some(format!("operator {actor}: {reason}"));
                "rollback"
            }
            Action::Pause => {
                if state.phase == Phase::RolledBack {
                    return Err(ActionError::Invalid(
                        "rolled back: shift or resume first".into(),
                    ));
                }
                state.phase = Phase::Paused;
                "pause"
            }
            Action::Resume => {
                state.phase = if state.weight >= 100.0 {
                    Phase::Promoted
                } else {
                    Phase::Progressing
                };
                state.reason = None;
                "resume"
            }
        };
        state.since_ms = now;
        let event = self.swap_state(&table, &name, current, state, label, actor, reason, true);
        Ok(event)
    }

    /// Replaces one route's state in a new table and records the event; publishes the change to
    /// the fleet when `publish` (not for changes that came from the fleet). Caller holds `writer`.
    #[allow(clippy::too_many_arguments)]
    fn swap_state(
        &self,
        table: &RolloutTable,
        name: &str,
        current: &RouteRollout,
        state: RolloutState,
        action: &str,
        actor: &str,
        reason: &str,
        publish: bool,
    ) -> Event {
        if publish
            && let Some(tx) = self
                .changes
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .as_ref()
        {
            let _ = tx.send(Change {
                route: name.to_string(),
                weight: state.weight,
                phase: state.phase,
                reason: state.reason.clone(),
                action: action.to_string(),
                actor: actor.to_string(),
            });
        }
        let event = Event {
            at_unix_ms: unix_ms(),
            route: name.to_string(),
            action: action.to_string(),
            actor: actor.to_string(),
            reason: reason.to_string(),
            weight_before: current.state.weight,
            weight_after: state.weight,
        };
        set_weight_gauge(name, state.weight);
        let mut by_route = table.by_route.clone();
        by_route.insert(
            name.to_string(),
            Arc::new(RouteRollout {
                state,
                windows: Arc::clone(&current.windows),
                gate: Arc::clone(&current.gate),
            }),
        );
        self.table.store(Arc::new(RolloutTable { by_route }));
        tracing::warn!(target: "audit", event = "rollout", route = name, action, actor, reason, weight_before = event.weight_before, weight_after = event.weight_after);
        let mut events = self.events.lock().unwrap_or_else(|p| p.into_inner());
        if events.len() == MAX_EVENTS {
            events.pop_front();
        }
        events.push_back(event.clone());
        event
    }

    /// Local changes from now on are also sent to the returned channel (fleet mode).
    pub fn subscribe(&self) -> tokio::sync::mpsc::UnboundedReceiver<Change> {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        *self.changes.lock().unwrap_or_else(|p| p.into_inner()) = Some(tx);
        rx
    }

    /// Applies a state decided elsewhere in the fleet; not re-published. Returns false when
    /// the route has no rollout here or nothing changes.
    pub fn apply_remote(
        &self,
        route: &str,
        weight: f64,
        phase: Phase,
        reason: Option<String>,
        actor: &str,
    ) -> bool {
        let _w = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let table = self.table.load_full();
        let Some(current) = table.by_route.get(route) else {
            return false;
        };
        if current.state.weight == weight && current.state.phase == phase {
            return false;
        }
        let mut state = current.state.clone();
        state.weight = weight;
        state.phase = phase;
        state.reason = reason;
        state.since_ms = clock::now_ms();
        self.swap_state(
            &table,
            route,
            current,
            state,
            "fleet-sync",
            actor,
            "applied from the fleet",
            false,
        );
        true
    }

    pub fn events(&self) -> Vec<Event> {
        self.events
            .lock()
            .map(|e| e.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// One controller pass: judge every active rollout; roll back on breach, advance steps
    /// while green, end promotion watches. Returns the events it caused.
    pub fn tick(&self) -> Vec<Event> {
        let now = clock::now_ms();
        let table = self.table.load_full();
        let mut out = Vec::new();
        for (name, rr) in &table.by_route {
            let s = &rr.state;
            let cfg = &s.config;
            // A candidate gets traffic to judge at a weight, or from copies of stable's requests
            // until it is promoted.
            let judged = match s.phase {
                Phase::Progressing | Phase::Paused => s.weight > 0.0 || cfg.mirror_percent > 0.0,
                Phase::Promoted => s.weight > 0.0,
                Phase::Complete | Phase::RolledBack => false,
            };
            let cand = rr.windows.all[1].stats(now);
            let stable = rr.windows.all[0].stats(now);
            let secs = cfg.gates.window.as_secs_f64();
            let regional: Vec<RegionView> = rr
                .windows
                .regions
                .iter()
                .flat_map(|(name, w)| {
                    [("stable", &w[0]), ("candidate", &w[1])]
                        .into_iter()
                        .filter_map(move |(version, win)| {
                            let st = win.stats(now);
                            (st.requests > 0).then(|| RegionView {
                                region: name.clone(),
                                version,
                                stats: StatsView::of(&st, secs),
                            })
                        })
                })
                .collect();
            let verdict = if judged {
                Some(model::evaluate(&cfg.gates, &cand, &stable))
            } else {
                None
            };
            {
                let mut g = rr.gate.lock().unwrap_or_else(|p| p.into_inner());
                g.candidate = Some(StatsView::of(&cand, secs));
                g.stable = Some(StatsView::of(&stable, secs));
                g.regions = regional;
                (g.state, g.detail) = match &verdict {
                    None if s.phase == Phase::RolledBack => {
                        // Still red while the bad window lasts, so a shift needs --force.
                        match model::evaluate(&cfg.gates, &cand, &stable) {
                            Verdict::Breach(why) => ("red".into(), why),
                            _ => ("idle".into(), s.reason.clone().unwrap_or_default()),
                        }
                    }
                    None => ("idle".into(), String::new()),
                    Some(Verdict::Pass) => ("green".into(), String::new()),
                    Some(Verdict::Inconclusive { requests, needed }) => (
                        "inconclusive".into(),
                        format!("{requests} of {needed} candidate requests needed: holding"),
                    ),
                    Some(Verdict::Breach(why)) => ("red".into(), why.clone()),
                };
            }
            let next = match verdict {
                Some(Verdict::Breach(why)) => {
                    metrics::counter!(telemetry::ROLLBACKS, telemetry::L_ROUTE => name.clone())
                        .increment(1);
                    let mut st = s.clone();
                    st.weight = 0.0;
                    st.phase = Phase::RolledBack;
                    st.reason = Some(why.clone());
                    Some((st, "automatic-rollback", why))
                }
                Some(Verdict::Pass) if s.phase == Phase::Progressing => {
                    let held = now.saturating_sub(s.since_ms) >= cfg.step_hold.as_millis() as u64;
                    match cfg.steps.iter().find(|w| **w > s.weight) {
                        Some(w) if held => {
                            let mut st = s.clone();
                            st.weight = *w;
                            st.phase = if *w >= 100.0 {
                                Phase::Promoted
                            } else {
                                Phase::Progressing
                            };
                            Some((
                                st,
                                "step",
                                format!("gates green for {}s", cfg.step_hold.as_secs()),
                            ))
                        }
                        _ => None,
                    }
                }
                Some(Verdict::Pass) if s.phase == Phase::Promoted => {
                    let watched = now.saturating_sub(s.since_ms)
                        >= cfg.post_promotion_watch.as_millis() as u64;
                    watched.then(|| {
                        let mut st = s.clone();
                        st.phase = Phase::Complete;
                        (st, "complete", "post-promotion watch passed".to_string())
                    })
                }
                _ => None,
            };
            if let Some((mut st, action, reason)) = next {
                let _w = self.writer.lock().unwrap_or_else(|p| p.into_inner());
                // Re-read under the lock: an operator may have acted since the judgement.
                let latest = self.table.load_full();
                let Some(current) = latest.by_route.get(name) else {
                    continue;
                };
                if current.state.weight != s.weight || current.state.phase != s.phase {
                    continue;
                }
                st.since_ms = now;
                out.push(self.swap_state(
                    &latest,
                    name,
                    current,
                    st,
                    action,
                    "controller",
                    &reason,
                    true,
                ));
            }
        }
        out
    }
}

fn snapshot_cluster_name<'a>(s: &RolloutState, snapshot: &'a Snapshot) -> &'a str {
    snapshot
        .clusters
        .get(s.config.candidate_cluster.0)
        .map_or("", |c| c.name.as_str())
}

fn set_weight_gauge(route: &str, weight: f64) {
    telemetry::prometheus();
    metrics::gauge!(telemetry::ROLLOUT_WEIGHT, telemetry::L_ROUTE => route.to_string()).set(weight);
}

/// Which version a request gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    Stable = 0,
    Candidate = 1,
}

/// The user key and whether a cookie must be set for it.
pub struct Assignment {
    pub version: Version,
    /// `Set-Cookie` value when the sticky cookie was absent.
    pub set_cookie: Option<http::HeaderValue>,
}

/// Who sent a request, as far as version assignment cares.
#[derive(Debug, Clone, Copy)]
pub struct Who {
    /// The client's address (the sticky key by IP, and without a header's).
    pub client: std::net::IpAddr,
    /// The peer is a trusted proxy (the override header may be limited to those, and its
    /// `X-Forwarded-Proto` says whether the client came over HTTPS).
    pub trusted: bool,
    /// The request came on the TLS listener.
    pub tls: bool,
}

/// Picks the version for a request: the override header (when allowed), else the sticky
/// bucket against the current weight.
pub fn assign(
    route_name: &str,
    state: &RolloutState,
    headers: &http::HeaderMap,
    Who {
        client,
        trusted,
        tls,
    }: Who,
) -> Assignment {
    let cfg = &state.config;
    if let Some(name) = &state.override_name
        && (!cfg.override_trusted_only || trusted)
    {
        match headers.get(name).map(|v| v.as_bytes()) {
            Some(b"canary" | b"candidate") => {
                return Assignment {
                    version: Version::Candidate,
                    set_cookie: None,
                };
            }
            Some(b"stable") => {
                return Assignment {
                    version: Version::Stable,
                    set_cookie: None,
                };
            }
            _ => {}
        }
    }
    let mut set_cookie = None;
    let ip_text;
    let fresh;
    let key: &[u8] = match &cfg.sticky {
        model::Sticky::Cookie(name) => match cookie(headers, name) {
            Some(v) => v,
            None => {
                // A new user: a fresh id, sent back as the cookie (built in one buffer). Over
                // HTTPS it is `Secure`: a browser then never sends it in the clear.
                const ATTRIBUTES: &[u8] = b"; Path=/; Max-Age=31536000; HttpOnly; SameSite=Lax";
                const SECURE: &[u8] = b"; Secure";
                fresh = crate::classify::new_id_digits();
                let mut value = Vec::with_capacity(
                    name.len() + 1 + fresh.len() + ATTRIBUTES.len() + SECURE.len(),
                );
                value.extend_from_slice(name.as_bytes());
                value.push(b'=');
                value.extend_from_slice(&fresh);
                value.extend_from_slice(ATTRIBUTES);
                // The client came over HTTPS: to us, or to a trusted proxy that says so (looked
                // up only here, for a new user).
                let https = tls
                    || (trusted
                        && headers
                            .get(&crate::classify::X_FORWARDED_PROTO)
                            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"https")));
                if https {
                    value.extend_from_slice(SECURE);
                }
                set_cookie = http::HeaderValue::from_maybe_shared(bytes::Bytes::from(value))
                    .ok()
                    .map(crate::classify::unique);
                &fresh
            }
        },
        model::Sticky::Header(h) => match headers.get(h.as_str()) {
            Some(v) if !v.is_empty() => v.as_bytes(),
            _ => {
                ip_text = crate::classify::ip_text(client);
                ip_text.as_bytes()
            }
        },
        model::Sticky::Ip => {
            ip_text = crate::classify::ip_text(client);
            ip_text.as_bytes()
        }
    };
    let bucket = model::bucket(route_name, key);
    let version = if model::is_candidate(bucket, state.weight) {
        Version::Candidate
    } else {
        Version::Stable
    };
    Assignment {
        version,
        set_cookie,
    }
}

/// A rollout's override header as a name (validated when the config loaded).
fn override_name(cfg: &Rollout) -> Option<http::HeaderName> {
    http::HeaderName::from_bytes(cfg.override_header.as_bytes()).ok()
}

/// The value of cookie `name` in the request's `Cookie` headers.
fn cookie<'a>(headers: &'a http::HeaderMap, name: &str) -> Option<&'a [u8]> {
    headers.get_all(http::header::COOKIE).iter().find_map(|v| {
        v.as_bytes().split(|b| *b == b';').find_map(|pair| {
            let pair = pair.trim_ascii();
            let (k, v) = pair.split_at(pair.iter().position(|b| *b == b'=')?);
            (k == name.as_bytes() && v.len() > 1).then(|| &v[1..])
        })
    })
}

#[cfg(test)]
mod tests;
