//! Upstream pools: the run-time side of a cluster — its current members (static addresses and
//! DNS answers), their health, the pooled HTTP client, and endpoint choice (round-robin or
//! least-request), preferring the front door's own region.
//!
//! Health state lives in [`MemberHealth`], shared by address across config reloads, so a reload
//! neither forgets an ejection nor resets a health check streak.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};

use arc_swap::{ArcSwap, ArcSwapOption};
use bytes::Bytes;
use http::uri::Authority;
use http_body_util::{Either, Empty};
use metrics::Gauge;
use routes::{
    Address, Cluster, LbPolicy, Limits, RegionId, RegionSet, Route, Snapshot, Timeouts,
    UpstreamProtocol, UpstreamTls,
};

use crate::clock;
use crate::telemetry;

/// Body sent upstream: the client's streaming body, or nothing (replayable requests).
pub type UpstreamBody = Either<super::body::ClientBody, Empty<Bytes>>;
pub use super::upstream::UpstreamClient;

/// How often an ejected endpoint is probed when no other can take the request, at most.
pub const PROBE_INTERVAL_MS: u64 = 1_000;

/// Health of one endpoint address, shared across reloads.
#[derive(Debug)]
pub struct MemberHealth {
    /// Result of active checks (true until a check says otherwise).
    active_ok: AtomicBool,
    /// Consecutive active-check results against the current state (towards a flip).
    streak: AtomicU32,
    /// Consecutive failures seen in live traffic (5xx, connect errors, timeouts).
    live_failures: AtomicU32,
    /// `outlier.failure_percentage`'s interval: when it began (clock millis; 0: not yet), and
    /// the outcomes and failures in it so far.
    rate_since: AtomicU64,
    rate_outcomes: AtomicU32,
    rate_failures: AtomicU32,
    /// Clock millis until which the endpoint is ejected; 0 = not ejected.
    ejected_until: AtomicU64,
    /// Clock millis before which no probe of the ejected endpoint is sent.
    next_probe: AtomicU64,
    /// Clock millis when it came back into service (an ejection ended, its checks passed
    /// again); 0: never out. The start of its `slow_start`.
    back_at: AtomicU64,
    pub in_flight: AtomicU64,
    gauge: Gauge,
    /// `frontdoor_upstream_ejections_total` of the endpoint's cluster.
    ejections: metrics::Counter,
    /// The cluster's cap on this endpoint's requests at once (`limits.max_requests_per_endpoint`);
    /// 0: none, and no gate.
    cap: AtomicU32,
    /// Slots under the cap; replaced when a cap is set anew.
    gate: ArcSwapOption<Gate>,
    /// The cluster's requests waiting for a slot (at this endpoint or another it has).
    waitlist: Arc<Waitlist>,
    /// The cluster's endpoints, for the cap on how many are ejected at once.
    peers: Arc<Peers>,
    /// `frontdoor_upstream_ejections_capped_total` of the endpoint's cluster.
    capped: metrics::Counter,
    /// The cluster's name and the endpoint's address, for the line logged at an ejection.
    names: Box<(String, String)>,
    /// Held while the cap changes (a reload, a DNS answer): one change at a time; the
    /// generation of the cluster runtime that set it last (see [`Self::set_cap`]).
    resizing: Mutex<u64>,
}

impl MemberHealth {
    fn new(
        cluster: &str,
        endpoint: &str,
        waitlist: Arc<Waitlist>,
        peers: Arc<Peers>,
    ) -> MemberHealth {
        telemetry::prometheus();
        let gauge = metrics::gauge!(telemetry::UPSTREAM_HEALTHY, telemetry::L_CLUSTER => cluster.to_string(), telemetry::L_ENDPOINT => endpoint.to_string());
        gauge.set(1.0);
        let ejections = metrics::counter!(telemetry::UPSTREAM_EJECTIONS, telemetry::L_CLUSTER => cluster.to_string());
        let capped = metrics::counter!(telemetry::UPSTREAM_EJECTIONS_CAPPED, telemetry::L_CLUSTER => cluster.to_string());
        MemberHealth {
            active_ok: AtomicBool::new(true),
            streak: AtomicU32::new(0),
            live_failures: AtomicU32::new(0),
            rate_since: AtomicU64::new(0),
            rate_outcomes: AtomicU32::new(0),
            rate_failures: AtomicU32::new(0),
            ejected_until: AtomicU64::new(0),
            next_probe: AtomicU64::new(0),
            back_at: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            gauge,
            ejections,
            cap: AtomicU32::new(0),
            gate: ArcSwapOption::empty(),
            waitlist,
            peers,
            capped,
            names: Box::new((cluster.to_string(), endpoint.to_string())),
            resizing: Mutex::new(0),
        }
    }

    /// Sets the cap on this endpoint's requests at once (0: none). Raising it opens slots at
    /// once; lowering it closes free slots at once and taken ones as they are given back, so
    /// the requests at the endpoint fall to the new cap as they end. Requests that started
    /// with no cap hold no slot: a cap set anew counts only the requests after it.
    ///
    /// `generation` orders the cluster runtimes that set caps: a runtime older than the one
    /// that set the cap last (a replaced config's, still answering its last requests, whose
    /// DNS refresh comes late) changes nothing.
    pub fn set_cap(&self, cap: u32, generation: u64) {
        let old = {
            let mut last = self.resizing.lock().unwrap_or_else(|p| p.into_inner());
            if generation < *last {
                return;
            }
            *last = generation;
            let old = self.cap.load(Ordering::Relaxed);
            match (old, cap) {
                _ if old == cap => return,
                (_, 0) => self.gate.store(None),
                (0, _) => self.gate.store(Some(Arc::new(Gate::new(
                    cap,
                    self,
                    Arc::clone(&self.waitlist),
                )))),
                _ => {
                    if let Some(gate) = self.gate.load_full() {
                        gate.resize(old, cap);
                    }
                }
            }
            self.cap.store(cap, Ordering::Relaxed);
            old
        };
        // Slots opened (or the cap lifted): the requests waiting for this endpoint take them.
        if cap == 0 || cap > old {
            std::sync::atomic::fence(Ordering::SeqCst);
            self.waitlist.dispatch(endpoint_key(self));
        }
    }

    /// Whether a request could take a slot here now without waiting (true with no cap).
    pub fn has_room(&self) -> bool {
        self.cap.load(Ordering::Relaxed) == 0
            || self
                .gate
                .load()
                .as_ref()
                .is_none_or(|g| g.sem.available_permits() > 0)
    }

    /// The cap and the slots taken under it now; `None` with no cap.
    pub fn slots(&self) -> Option<(u32, u32)> {
        let cap = self.cap.load(Ordering::Relaxed);
        let gate = self.gate.load();
        let gate = gate.as_ref().filter(|_| cap > 0)?;
        // Slots there are = free + taken − owed, and there are `cap` of them once the debt of
        // a lowered cap is paid.
        let free = gate.sem.available_permits() as u32;
        let taken = (cap + gate.debt.load(Ordering::Relaxed)).saturating_sub(free);
        Some((cap, taken))
    }

    /// A slot for one request at this endpoint if one is free now, held until the request's
    /// response ends (the [`Slot`] is dropped); `Ok(None)`: no cap. When every slot is taken,
    /// [`Full`]: the request waits in its cluster's [`Waitlist`].
    pub fn try_slot(&self) -> Result<Option<Slot>, Full> {
        if self.cap.load(Ordering::Relaxed) == 0 {
            return Ok(None);
        }
        let Some(gate) = self.gate.load_full() else {
            return Ok(None);
        };
        if gate.sem.try_acquire().map(|p| p.forget()).is_ok() {
            Ok(Some(Slot(gate)))
        } else {
            Err(Full)
        }
    }

    pub fn active_ok(&self) -> bool {
        self.active_ok.load(Ordering::Relaxed)
    }

    pub fn ejected(&self, now_ms: u64) -> bool {
        self.ejected_until.load(Ordering::Relaxed) > now_ms
    }

    pub fn available(&self, now_ms: u64) -> bool {
        self.active_ok() && !self.ejected(now_ms)
    }

    /// `weight` as it counts at `now_ms`, in thousandths: all of it, or — within `slow_start`
    /// of the endpoint's coming back into service — a share growing in a straight line from a
    /// tenth to all of it.
    fn weight_now(&self, weight: u32, slow_start_ms: u64, now_ms: u64) -> u64 {
        let whole = u64::from(weight) * 1000;
        if slow_start_ms == 0 {
            return whole;
        }
        // An ejection that ran out but is not cleared yet ended at its recorded time.
        let until = self.ejected_until.load(Ordering::Relaxed);
        let ran_out = if until <= now_ms { until } else { 0 };
        let back = self.back_at.load(Ordering::Relaxed).max(ran_out);
        let since = now_ms.saturating_sub(back);
        if back == 0 || since >= slow_start_ms {
            return whole;
        }
        u64::from(weight) * (100 + 900 * since / slow_start_ms)
    }

    /// Whether a probe of this endpoint may go at `now_ms` (see [`ClusterRuntime::pick`]).
    fn probe_due(&self, now_ms: u64) -> bool {
        self.next_probe.load(Ordering::Relaxed) <= now_ms
    }

    /// Takes the probe due at `now_ms`; false when another request took it first.
    fn take_probe(&self, now_ms: u64) -> bool {
        let due = self.next_probe.load(Ordering::Relaxed);
        due <= now_ms
            && self
                .next_probe
                .compare_exchange(
                    due,
                    now_ms + PROBE_INTERVAL_MS,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
    }

    /// The ejection ends and the failure streak starts over: a probe was answered, or the
    /// active checks found the endpoint recovered.
    pub fn restore(&self) {
        self.back_at.store(clock::now_ms(), Ordering::Relaxed);
        self.ejected_until.store(0, Ordering::Relaxed);
        self.live_failures.store(0, Ordering::Relaxed);
        self.rate_since.store(0, Ordering::Relaxed);
        self.rate_outcomes.store(0, Ordering::Relaxed);
        self.rate_failures.store(0, Ordering::Relaxed);
        self.refresh_gauge();
        // Its free slots were kept from the requests waiting for it while it was out.
        self.waitlist.dispatch(endpoint_key(self));
    }

    fn refresh_gauge(&self) {
        let up = self.available(clock::now_ms());
        self.gauge.set(if up { 1.0 } else { 0.0 });
    }

    /// Clears an ejection whose time has run out, so the gauge says the endpoint takes traffic
    /// again: when the time runs out ([`Self::end_ejection_after`]) or at the next check or
    /// outcome, whichever comes first. Reads the clock only while an ejection is recorded.
    fn clear_expired(&self) {
        let until = self.ejected_until.load(Ordering::Relaxed);
        if until != 0 && until <= clock::now_ms() {
            // Back when the ejection ran out (kept before the ejection's end is cleared, so
            // [`Self::weight_now`] sees one or the other).
            self.back_at.fetch_max(until, Ordering::Relaxed);
            if self
                .ejected_until
                .compare_exchange(until, 0, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
            {
                self.refresh_gauge();
            }
        }
    }

    /// Records an active check result; flips state after `threshold` results in a row.
    pub fn record_check(&self, ok: bool, healthy_threshold: u32, unhealthy_threshold: u32) {
        self.clear_expired();
        let current = self.active_ok();
        if ok == current {
            self.streak.store(0, Ordering::Relaxed);
            return;
        }
        let needed = if ok {
            healthy_threshold
        } else {
            unhealthy_threshold
        };
        if self.streak.fetch_add(1, Ordering::Relaxed) + 1 >= needed {
            self.active_ok.store(ok, Ordering::Relaxed);
            self.streak.store(0, Ordering::Relaxed);
            if ok {
                // A recovered endpoint starts with a clean slate.
                self.restore();
            } else {
                self.refresh_gauge();
            }
        }
    }

    /// Records a live-traffic outcome; returns true when this failure ejected the endpoint
    /// (counted in `frontdoor_upstream_ejections_total`). A failure that would eject it while
    /// `max_ejection_percent` of the cluster's endpoints are out leaves it in, and starts its
    /// count again (`frontdoor_upstream_ejections_capped_total`). With
    /// `outlier.failure_percentage`, an outcome that ends an interval in which the endpoint
    /// failed too often ejects it too.
    pub fn record_live(self: &Arc<Self>, ok: bool, outlier: &routes::Outlier) -> bool {
        self.clear_expired();
        if let Some(rate) = &outlier.failure_percentage
            && let Some(seen) = self.failed_too_often(ok, rate)
        {
            self.live_failures.store(0, Ordering::Relaxed);
            return self.eject(outlier, seen);
        }
        if ok {
            self.live_failures.store(0, Ordering::Relaxed);
            return false;
        }
        let n = self.live_failures.fetch_add(1, Ordering::Relaxed) + 1;
        if outlier.consecutive_failures == 0 || n < outlier.consecutive_failures {
            return false;
        }
        self.live_failures.store(0, Ordering::Relaxed);
        self.eject(outlier, Seen::InARow(n))
    }

    /// Counts an outcome in the endpoint's failure-rate interval. The first outcome after the
    /// interval's end judges it (one caller does, and starts the next): what was seen, when at
    /// least `min_requests` came and `percent` of them or more failed.
    fn failed_too_often(&self, ok: bool, rate: &routes::FailurePercentage) -> Option<Seen> {
        self.rate_outcomes.fetch_add(1, Ordering::Relaxed);
        if !ok {
            self.rate_failures.fetch_add(1, Ordering::Relaxed);
        }
        let now = clock::now_ms();
        let since = self.rate_since.load(Ordering::Relaxed);
        if since == 0 {
            let _ = self
                .rate_since
                .compare_exchange(0, now, Ordering::Relaxed, Ordering::Relaxed);
            return None;
        }
        if now < since + rate.interval.as_millis() as u64
            || self
                .rate_since
                .compare_exchange(since, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return None;
        }
        let outcomes = self.rate_outcomes.swap(0, Ordering::Relaxed);
        let failures = self.rate_failures.swap(0, Ordering::Relaxed);
        (outcomes >= rate.min_requests
            && u64::from(failures) * 100 >= u64::from(rate.percent) * u64::from(outcomes))
        .then_some(Seen::Rate { failures, outcomes })
    }

    /// Ejects the endpoint for `outlier.ejection_time`, unless the cluster's cap says not,
    /// and logs why (a warning: once per ejection, not per request).
    fn eject(self: &Arc<Self>, outlier: &routes::Outlier, seen: Seen) -> bool {
        let now = clock::now_ms();
        let until = now + outlier.ejection_time.as_millis() as u64;
        if !self
            .peers
            .eject(self, until, outlier.max_ejection_percent, now)
        {
            self.capped.increment(1);
            return false;
        }
        self.ejections.increment(1);
        self.refresh_gauge();
        self.end_ejection_after(outlier.ejection_time);
        let (reason, failures, outcomes) = match seen {
            Seen::InARow(n) => ("failures in a row", n, n),
            Seen::Rate { failures, outcomes } => ("failure rate", failures, outcomes),
        };
        tracing::warn!(
            cluster = %self.names.0,
            endpoint = %self.names.1,
            reason,
            failures,
            outcomes,
            ejection_s = outlier.ejection_time.as_secs_f64(),
            "endpoint ejected"
        );
        true
    }

    /// Ends the ejection just recorded when its time runs out, though nothing else happens
    /// then (no check, no request picks the endpoint): the gauge says it takes traffic again,
    /// and its free slots go to the requests waiting for it, which would otherwise wait for a
    /// newcomer to pick it or for a slot elsewhere. A later ejection sets its own time; this
    /// one then finds the endpoint still out and changes nothing.
    fn end_ejection_after(self: &Arc<Self>, after: std::time::Duration) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let health = Arc::downgrade(self);
        runtime.spawn(async move {
            tokio::time::sleep(after).await;
            let Some(health) = health.upgrade() else {
                return;
            };
            health.clear_expired();
            if !health.ejected(clock::now_ms()) {
                health.waitlist.dispatch(endpoint_key(&health));
            }
        });
    }
}

#[cfg(test)]
impl MemberHealth {
    /// An endpoint's health on its own (tests elsewhere in `forward`).
    pub(super) fn alone(cluster: &str, endpoint: &str) -> Arc<MemberHealth> {
        let waitlist = Arc::new(Waitlist::new(cluster));
        let health = Arc::new(MemberHealth::new(
            cluster,
            endpoint,
            waitlist,
            Arc::default(),
        ));
        health.peers.join(&health);
        health
    }
}

/// What ejected an endpoint: its last `n` outcomes failed, or `failures` of the `outcomes` in
/// its failure-rate interval.
#[derive(Debug, Clone, Copy)]
enum Seen {
    InARow(u32),
    Rate { failures: u32, outcomes: u32 },
}

/// A cluster's endpoints (kept across reloads, like their health), for the cap on how many
/// of them are ejected at once (`outlier.max_ejection_percent`).
#[derive(Debug, Default)]
pub struct Peers {
    /// Every endpoint's health the registry keeps for the cluster; an address no config uses
    /// any more is dropped from the registry, and from here once nothing holds it.
    health: Mutex<Vec<Weak<MemberHealth>>>,
}

impl Peers {
    fn join(&self, health: &Arc<MemberHealth>) {
        let mut all = self.health.lock().unwrap_or_else(|p| p.into_inner());
        all.retain(|h| h.strong_count() > 0);
        all.push(Arc::downgrade(health));
    }

    /// Ejects `health` until `until` unless that would put more than `max_percent` of the
    /// cluster's endpoints out at `now` (rounded down; one may always be); false when it
    /// stays in. One ejection is decided at a time, so two at once cannot both take the last
    /// room.
    fn eject(&self, health: &MemberHealth, until: u64, max_percent: u32, now: u64) -> bool {
        let all = self.health.lock().unwrap_or_else(|p| p.into_inner());
        if max_percent < 100 && !health.ejected(now) {
            let (mut endpoints, mut out) = (0usize, 0usize);
            for peer in all.iter().filter_map(Weak::upgrade) {
                endpoints += 1;
                out += usize::from(peer.ejected(now));
            }
            let room = (endpoints * max_percent as usize / 100).max(1);
            if out >= room {
                return false;
            }
        }
        health.ejected_until.store(until, Ordering::Relaxed);
        true
    }
}

/// A cluster's requests waiting for a slot under its endpoints' caps, first come, first
/// served: a slot given back at an endpoint goes to the longest waiter that may use that
/// endpoint (its version; its allowed regions, within its route's region policy), so no
/// request waits for one endpoint while another it may use has room, and a region's slots
/// never go to a request that may not leave another. One per cluster name, shared across
/// reloads as health is.
#[derive(Debug)]
pub struct Waitlist {
    /// Requests waiting now: what `limits.max_queued` bounds.
    waiting: AtomicU32,
    /// The same, exported (`frontdoor_upstream_waiting{cluster}`).
    gauge: Gauge,
    lines: Mutex<Lines>,
}

/// Where each waiting request stands: in the line of every endpoint it may use, so a slot given
/// back finds its taker at the front of one line, however many requests wait for other
/// endpoints. A request served through one line, or gone (its client, its timeout), is passed
/// over in the others when it comes to their front.
#[derive(Debug, Default)]
struct Lines {
    /// By endpoint (its [`MemberHealth`]'s address): waiting requests by number, oldest first.
    by_endpoint: routes::LookupMap<usize, VecDeque<(u64, Arc<Member>)>>,
    /// Where each waiting request's slot goes, by number.
    give: routes::LookupMap<u64, Given>,
    next: u64,
}

type Given = tokio::sync::oneshot::Sender<(Arc<Member>, Option<Slot>)>;

impl Lines {
    /// Passes over the requests at the front of `endpoint`'s line that are served or gone.
    fn clear_front(&mut self, endpoint: usize) {
        let Some(line) = self.by_endpoint.get_mut(&endpoint) else {
            return;
        };
        while let Some((n, _)) = line.front() {
            match self.give.get(n) {
                Some(g) if !g.is_closed() => return,
                Some(_) => {
                    self.give.remove(n);
                }
                None => {}
            }
            line.pop_front();
        }
        self.by_endpoint.remove(&endpoint);
    }
}

fn endpoint_key(health: &MemberHealth) -> usize {
    std::ptr::from_ref(health) as usize
}

impl Waitlist {
    fn new(cluster: &str) -> Waitlist {
        telemetry::prometheus();
        Waitlist {
            waiting: AtomicU32::new(0),
            gauge: metrics::gauge!(telemetry::UPSTREAM_WAITING, telemetry::L_CLUSTER => cluster.to_string()),
            lines: Mutex::default(),
        }
    }

    /// Requests waiting for a slot now.
    pub fn waiting(&self) -> u32 {
        self.waiting.load(Ordering::Relaxed)
    }

    fn lines(&self) -> std::sync::MutexGuard<'_, Lines> {
        self.lines.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits for a slot at one of `may_use` (whichever gives one back first) for at most
    /// `limits.queue_timeout`, with at most `limits.max_queued` requests of the cluster
    /// waiting: the member and its slot (`None`: the member's cap was lifted meanwhile), or
    /// why not ([`Busy`]). A request that goes away while it waits (the future dropped)
    /// leaves the queue.
    pub async fn wait(
        &self,
        may_use: Vec<Arc<Member>>,
        limits: &Limits,
    ) -> Result<(Arc<Member>, Option<Slot>), Busy> {
        /// Counts the request as waiting until it stops, however it stops.
        struct Waiting<'a>(&'a Waitlist);
        impl Drop for Waiting<'_> {
            fn drop(&mut self) {
                self.0.waiting.fetch_sub(1, Ordering::Relaxed);
            }
        }
        let ahead = self.waiting.fetch_add(1, Ordering::Relaxed);
        let _waiting = Waiting(self);
        if ahead >= limits.max_queued {
            return Err(Busy::QueueFull);
        }
        /// The exported count: only the requests that do wait.
        struct Exported<'a>(&'a Gauge);
        impl Drop for Exported<'_> {
            fn drop(&mut self) {
                self.0.decrement(1.0);
            }
        }
        self.gauge.increment(1.0);
        let _exported = Exported(&self.gauge);
        /// Takes the request out of the lines when its wait ends, however it ends: it and
        /// whatever else is done at their fronts, so the lines hold no more than the requests
        /// still waiting and those behind them.
        struct Leaving<'a> {
            waitlist: &'a Waitlist,
            n: u64,
            endpoints: Vec<usize>,
        }
        impl Drop for Leaving<'_> {
            fn drop(&mut self) {
                let mut lines = self.waitlist.lines();
                lines.give.remove(&self.n);
                for e in &self.endpoints {
                    lines.clear_front(*e);
                }
            }
        }
        let (given, _leaving) = {
            let mut lines = self.lines();
            // Against a slot given back since the pick (see `Slot`'s drop): either this sees
            // it free, or its dispatch sees this request counted and, taking the lock after
            // this one, in line.
            std::sync::atomic::fence(Ordering::SeqCst);
            let now = clock::now_ms();
            for m in &may_use {
                if m.health.available(now)
                    && let Ok(slot) = m.health.try_slot()
                {
                    return Ok((Arc::clone(m), slot));
                }
            }
            let (give, given) = tokio::sync::oneshot::channel();
            let n = lines.next;
            lines.next += 1;
            lines.give.insert(n, give);
            let mut endpoints = Vec::with_capacity(may_use.len());
            for m in may_use {
                let endpoint = endpoint_key(&m.health);
                endpoints.push(endpoint);
                lines
                    .by_endpoint
                    .entry(endpoint)
                    .or_default()
                    .push_back((n, m));
            }
            let leaving = Leaving {
                waitlist: self,
                n,
                endpoints,
            };
            (given, leaving)
        };
        match tokio::time::timeout(limits.queue_timeout, given).await {
            Ok(Ok(got)) => Ok(got),
            _ => Err(Busy::QueueTimeout),
        }
    }

    /// Gives the free slots of one endpoint (`endpoint`: its [`MemberHealth`]'s address) to
    /// the longest waiters in its line, while it takes traffic: called when a slot there is
    /// given back, its cap is raised or lifted, or it is back from an ejection. Nothing to do,
    /// and no lock taken, while nobody waits (the callers fence first where a waiter could be
    /// counting itself at the same moment: see `Slot`'s drop).
    fn dispatch(&self, endpoint: usize) {
        if self.waiting() == 0 {
            return;
        }
        // A slot taken for a waiter that went away just before it was given: offered to the
        // next one, and given back (outside the lock) if nobody takes it.
        let mut spare: Option<Option<Slot>> = None;
        {
            let mut lines = self.lines();
            let now = clock::now_ms();
            loop {
                lines.clear_front(endpoint);
                let Some((_, m)) = lines.by_endpoint.get(&endpoint).and_then(|l| l.front()) else {
                    break;
                };
                if !m.health.available(now) {
                    break;
                }
                let slot = match spare.take() {
                    Some(slot) => slot,
                    None => match m.health.try_slot() {
                        Ok(slot) => slot,
                        Err(Full) => break,
                    },
                };
                let Lines {
                    by_endpoint, give, ..
                } = &mut *lines;
                let (n, m) = by_endpoint
                    .get_mut(&endpoint)
                    .and_then(VecDeque::pop_front)
                    .expect("the front just seen");
                let taker = give.remove(&n).expect("a waiter in line");
                if let Err((_, slot)) = taker.send((m, slot)) {
                    spare = Some(slot);
                }
            }
        }
        drop(spare);
    }
}

/// Every slot at an endpoint is taken (see [`MemberHealth::try_slot`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Full;

/// Why a request got no slot (see [`Waitlist::wait`]): a 503.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Busy {
    /// As many requests as the queue holds were already waiting.
    QueueFull,
    /// No slot came free within the queue timeout.
    QueueTimeout,
}

impl Busy {
    pub fn reason(self) -> &'static str {
        match self {
            Busy::QueueFull => "queue_full",
            Busy::QueueTimeout => "queue_timeout",
        }
    }
}

/// One endpoint's slots: the free ones are a semaphore's permits (taken without waiting:
/// requests wait in the cluster's [`Waitlist`]).
#[derive(Debug)]
struct Gate {
    sem: tokio::sync::Semaphore,
    /// Slots to close as they are given back: the cap was lowered while they were taken.
    debt: AtomicU32,
    /// The endpoint's [`MemberHealth`], by address: which waiters a slot given back may go to.
    owner: usize,
    waitlist: Arc<Waitlist>,
}

impl Gate {
    fn new(cap: u32, owner: &MemberHealth, waitlist: Arc<Waitlist>) -> Gate {
        Gate {
            sem: tokio::sync::Semaphore::new(cap as usize),
            debt: AtomicU32::new(0),
            owner: endpoint_key(owner),
            waitlist,
        }
    }

    fn resize(&self, old: u32, new: u32) {
        if new > old {
            // Slots still owed from an earlier cut are forgiven before new ones open.
            let more = new - old;
            let (Ok(owed) | Err(owed)) =
                self.debt
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |d| {
                        Some(d - d.min(more))
                    });
            self.sem.add_permits((more - owed.min(more)) as usize);
        } else {
            let cut = old - new;
            let closed = self.sem.forget_permits(cut as usize) as u32;
            self.debt.fetch_add(cut - closed, Ordering::Relaxed);
        }
    }
}

/// A request's place under an endpoint's cap; dropping it gives the slot back (to the longest
/// waiter that may use the endpoint, if any), or closes it when the cap was lowered meanwhile.
#[derive(Debug)]
pub struct Slot(Arc<Gate>);

impl Drop for Slot {
    fn drop(&mut self) {
        let owed = self
            .0
            .debt
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |d| d.checked_sub(1))
            .is_ok();
        if !owed {
            self.0.sem.add_permits(1);
            // Against a waiter that counted itself and then found no slot free (see
            // `Waitlist::wait`): either it sees this slot, or this sees it waiting.
            std::sync::atomic::fence(Ordering::SeqCst);
            self.0.waitlist.dispatch(self.0.owner);
        }
    }
}

/// One concrete address in a cluster's pool.
#[derive(Debug)]
pub struct Member {
    pub addr: SocketAddr,
    /// `ip:port`, pre-built for request URIs.
    pub authority: Authority,
    pub region: Option<RegionId>,
    pub version: Option<Arc<str>>,
    pub health: Arc<MemberHealth>,
    /// Relative share of requests (`endpoints[].weight`).
    pub weight: u32,
}

impl Member {
    /// Whether this member carries `version` (when one is named) and lies in `regions` (when
    /// regions are declared: `None` otherwise), whatever its health.
    fn serves(&self, version: Option<&str>, regions: Option<RegionSet>) -> bool {
        version.is_none_or(|v| self.version.as_deref() == Some(v))
            && regions.is_none_or(|set| self.region.is_some_and(|r| set.contains(r)))
    }
}

/// The `i`-th point of a low-discrepancy sequence over `0..total` (`i` times the golden ratio,
/// modulo 1, scaled): each value's share of the first `n` points is within a few of its share
/// of `total`, and consecutive points land far apart, so a member of weight 3 among weights
/// summing to 4 gets three requests in four, interleaved with the others', not in bursts.
fn spread(i: u64, total: u64) -> u64 {
    const PHI_FRACTION: u64 = 0x9E37_79B9_7F4A_7C15;
    ((u128::from(i.wrapping_mul(PHI_FRACTION)) * u128::from(total)) >> 64) as u64
}

/// What a request asks of its cluster's members ([`ClusterRuntime::pick`],
/// [`ClusterRuntime::may_use`]): those of `version` (when it names one), in `allowed` regions
/// within `route`'s region policy, other than `avoid` (the member a retry follows) where
/// another will do, judged at `now` ([`clock::now_ms`] as the caller read it).
#[derive(Debug, Clone, Copy)]
pub struct Ask<'a> {
    pub snapshot: &'a Snapshot,
    pub route: &'a Route,
    pub version: Option<&'a str>,
    pub allowed: RegionSet,
    pub avoid: Option<&'a Member>,
    pub now: u64,
}

/// Health states by (cluster, address) and waitlists by cluster, kept across reloads.
#[derive(Debug, Default)]
pub struct HealthRegistry {
    states: Mutex<HashMap<(String, SocketAddr), Arc<MemberHealth>>>,
    /// Held by the cluster's runtimes and its endpoints' health (and their slots).
    waitlists: Mutex<HashMap<String, Weak<Waitlist>>>,
    /// Held by the cluster's endpoints' health.
    peers: Mutex<HashMap<String, Weak<Peers>>>,
}

/// `cluster`'s entry of `map`, made by `make` when nothing holds one.
fn shared<T>(
    map: &Mutex<HashMap<String, Weak<T>>>,
    cluster: &str,
    make: impl FnOnce() -> T,
) -> Arc<T> {
    let mut map = map.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(t) = map.get(cluster).and_then(Weak::upgrade) {
        return t;
    }
    let t = Arc::new(make());
    map.insert(cluster.to_string(), Arc::downgrade(&t));
    t
}

impl HealthRegistry {
    pub fn get(&self, cluster: &str, addr: SocketAddr) -> Arc<MemberHealth> {
        let mut states = self.states.lock().unwrap_or_else(|p| p.into_inner());
        Arc::clone(
            states
                .entry((cluster.to_string(), addr))
                .or_insert_with(|| {
                    let peers = shared(&self.peers, cluster, Peers::default);
                    let health = Arc::new(MemberHealth::new(
                        cluster,
                        &addr.to_string(),
                        self.waitlist(cluster),
                        Arc::clone(&peers),
                    ));
                    peers.join(&health);
                    health
                }),
        )
    }

    /// The requests of `cluster` waiting for a slot.
    pub fn waitlist(&self, cluster: &str) -> Arc<Waitlist> {
        shared(&self.waitlists, cluster, || Waitlist::new(cluster))
    }

    /// Forgets addresses no cluster uses any more (after a reload or a DNS change), and the
    /// waitlists nothing holds.
    pub fn retain(&self, keep: impl Fn(&(String, SocketAddr)) -> bool) {
        let mut states = self.states.lock().unwrap_or_else(|p| p.into_inner());
        states.retain(|k, _| keep(k));
        drop(states);
        let mut lists = self.waitlists.lock().unwrap_or_else(|p| p.into_inner());
        lists.retain(|_, w| w.strong_count() > 0);
        drop(lists);
        let mut peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        peers.retain(|_, p| p.strong_count() > 0);
    }
}

/// Clients keyed by transport settings, reused across reloads so pooled connections survive.
#[derive(Debug, Default)]
pub struct ClientRegistry {
    /// By cluster, protocol, timeouts and TLS files (with a hash of their contents, so rotated
    /// files make a new client).
    #[allow(clippy::type_complexity)]
    clients: Mutex<
        HashMap<
            (
                String,
                UpstreamProtocol,
                Timeouts,
                Option<(UpstreamTls, String)>,
            ),
            UpstreamClient,
        >,
    >,
}

impl ClientRegistry {
    /// The pooled client for a cluster; an error names the TLS file that could not be used.
    pub fn get(&self, cluster: &Cluster) -> Result<UpstreamClient, String> {
        let tls = match &cluster.tls {
            Some(t) => {
                let mut text = String::new();
                let files = [
                    Some(&t.ca),
                    t.client_cert.as_ref().map(|c| &c.0),
                    t.client_cert.as_ref().map(|c| &c.1),
                ];
                for f in files.into_iter().flatten() {
                    let bytes = std::fs::read(f)
                        .map_err(|e| format!("clusters.{}.tls: {f}: {e}", cluster.name))?;
                    text.push_str(&String::from_utf8_lossy(&bytes));
                }
                Some((t.clone(), routes::content_hash(&text)))
            }
            None => None,
        };
        let key = (
            cluster.name.clone(),
            cluster.protocol,
            cluster.timeouts,
            tls,
        );
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = clients.get(&key) {
            return Ok(c.clone());
        }
        let client = build_client(cluster)?;
        clients.insert(key, client.clone());
        Ok(client)
    }
}

/// The rustls client config for a cluster's TLS: its CA as the only root, and the client
/// certificate when mutual TLS is configured.
fn tls_client_config(cluster: &Cluster, tls: &UpstreamTls) -> Result<rustls::ClientConfig, String> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let at =
        |f: &str, e: &dyn std::fmt::Display| format!("clusters.{}.tls: {f}: {e}", cluster.name);
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(&tls.ca).map_err(|e| at(&tls.ca, &e))? {
        roots
            .add(cert.map_err(|e| at(&tls.ca, &e))?)
            .map_err(|e| at(&tls.ca, &e))?;
    }
    if roots.is_empty() {
        return Err(at(&tls.ca, &"no CERTIFICATE block found"));
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| at(&tls.ca, &e))?
    .with_root_certificates(roots);
    match &tls.client_cert {
        None => Ok(builder.with_no_client_auth()),
        Some((cert, key)) => {
            let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
                .map_err(|e| at(cert, &e))?
                .collect::<Result<_, _>>()
                .map_err(|e| at(cert, &e))?;
            let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| at(key, &e))?;
            builder
                .with_client_auth_cert(chain, key_der)
                .map_err(|e| at(cert, &e))
        }
    }
}

fn build_client(cluster: &Cluster) -> Result<UpstreamClient, String> {
    let http2 = cluster.protocol == UpstreamProtocol::H2;
    let tls = match &cluster.tls {
        Some(t) => {
            let mut config = tls_client_config(cluster, t)?;
            config.alpn_protocols = vec![if http2 {
                b"h2".to_vec()
            } else {
                b"http/1.1".to_vec()
            }];
            let name = match &t.server_name {
                Some(name) => Some(
                    rustls_pki_types::ServerName::try_from(name.clone())
                        .map_err(|e| format!("clusters.{}.tls.server_name: {e}", cluster.name))?,
                ),
                None => None,
            };
            Some((tokio_rustls::TlsConnector::from(Arc::new(config)), name))
        }
        None => None,
    };
    Ok(UpstreamClient::new(super::upstream::Transport {
        http2,
        connect_timeout: cluster.timeouts.connect,
        idle_timeout: cluster.timeouts.idle,
        tls,
    }))
}

/// The run-time state of one cluster for one config snapshot.
#[derive(Debug)]
pub struct ClusterRuntime {
    pub config: Cluster,
    pub client: UpstreamClient,
    /// Current members: static endpoints plus the latest DNS answers.
    pub members: ArcSwap<Vec<Arc<Member>>>,
    rr: AtomicUsize,
    pub in_flight: AtomicU64,
    pub retries_in_flight: AtomicU64,
    /// The cluster's requests waiting for a slot (shared with the runtimes before and after).
    pub waitlist: Arc<Waitlist>,
    /// Orders runtimes by creation, newest highest (see [`MemberHealth::set_cap`]).
    generation: u64,
    /// Some endpoint's weight is not 1: members are chosen by weight.
    weighted: bool,
}

impl ClusterRuntime {
    pub fn new(
        config: Cluster,
        client: UpstreamClient,
        members: Vec<Arc<Member>>,
        waitlist: Arc<Waitlist>,
    ) -> ClusterRuntime {
        static GENERATIONS: AtomicU64 = AtomicU64::new(1);
        ClusterRuntime {
            generation: GENERATIONS.fetch_add(1, Ordering::Relaxed),
            weighted: config.endpoints.iter().any(|e| e.weight != 1)
                || !config.slow_start.is_zero(),
            config,
            client,
            members: ArcSwap::from_pointee(members),
            rr: AtomicUsize::new(0),
            in_flight: AtomicU64::new(0),
            retries_in_flight: AtomicU64::new(0),
            waitlist,
        }
    }

    /// Gives the current members this cluster's cap (`limits.max_requests_per_endpoint`): when
    /// the runtime goes into service (after everything else of its config was accepted, so a
    /// rejected reload changes no cap) and after each DNS answer.
    pub fn apply_limits(&self) {
        for m in self.members.load().iter() {
            m.health
                .set_cap(self.config.limits.max_per_endpoint, self.generation);
        }
    }

    /// Builds members for the given addresses of one configured endpoint.
    pub fn members_for(
        cluster: &Cluster,
        endpoint: &routes::Endpoint,
        addrs: &[SocketAddr],
        health: &HealthRegistry,
    ) -> Vec<Arc<Member>> {
        let version: Option<Arc<str>> = endpoint.version.as_deref().map(Arc::from);
        addrs
            .iter()
            .filter_map(|addr| {
                let authority = Authority::try_from(addr.to_string()).ok()?;
                Some(Arc::new(Member {
                    addr: *addr,
                    authority,
                    region: endpoint.region,
                    version: version.clone(),
                    health: health.get(&cluster.name, *addr),
                    weight: endpoint.weight,
                }))
            })
            .collect()
    }

    /// Chooses a member for one attempt of a request on `route`.
    ///
    /// Eligible members carry the route's version (when it names one) and are available
    /// (passing active checks, not ejected). With regions declared, the region comes from
    /// [`Snapshot::pick_region`] over the regions that have an eligible member and are in
    /// `allowed` — so a restricted request can never reach a region outside `allowed`, on
    /// the first attempt or a retry. `avoid` (a member that just failed) is skipped when the
    /// chosen region has another.
    ///
    /// Passive ejection steers traffic away from a failing member while others can take it.
    /// When every member the request may use is ejected, the request goes to one of them as
    /// a probe if that member's probe is due — one per member per [`PROBE_INTERVAL_MS`], still
    /// only inside `allowed` — and otherwise gets nothing (a 503). A probe that is answered
    /// ends the ejection ([`MemberHealth::restore`]): a burst of failures (an upstream shedding
    /// connections under a spike) costs about a second of refusals at most, not the whole
    /// ejection time, while a member that stays down is tried once a second and the other
    /// requests are refused at once. Members failing their active checks are never probed.
    ///
    /// With a cap on each endpoint's requests (`limits.max_requests_per_endpoint`), members
    /// with a free slot come first — inside `allowed` a full region's share goes to the others
    /// — and when every available one is full, the choice among them all is still made: the
    /// request then waits in the cluster's [`Waitlist`] for a slot at any member it may use
    /// ([`Self::may_use`]).
    pub fn pick(&self, ask: &Ask<'_>) -> Option<Arc<Member>> {
        let capped = self.config.limits.max_per_endpoint > 0;
        let now = ask.now;
        self.pick_among(ask, |h| h.available(now) && (!capped || h.has_room()))
            .or_else(|| {
                // Every endpoint that takes traffic is at its cap: one to try before the
                // request waits in the cluster's queue.
                capped
                    .then(|| self.pick_among(ask, |h| h.available(now)))
                    .flatten()
            })
            .or_else(|| {
                let m = self.pick_among(ask, |h| h.active_ok() && h.probe_due(now))?;
                m.health.take_probe(now).then_some(m)
            })
    }

    /// [`Self::pick`]'s choice among the members whose health is `usable` (with
    /// [`MemberHealth::available`] at a time: among those taking traffic, never a probe).
    pub fn pick_among(
        &self,
        ask: &Ask<'_>,
        usable: impl Fn(&MemberHealth) -> bool,
    ) -> Option<Arc<Member>> {
        let Ask {
            snapshot,
            route,
            version,
            allowed,
            avoid,
            now,
        } = *ask;
        let members = self.members.load();
        let eligible = |m: &Member| {
            version.is_none_or(|v| m.version.as_deref() == Some(v)) && usable(&m.health)
        };
        let fresh = |m: &Member| avoid.is_none_or(|a| !std::ptr::eq(a, m));
        let n = self.rr.fetch_add(1, Ordering::Relaxed);
        let region = if snapshot.regions.is_empty() {
            None
        } else {
            let healthy_regions = |also: &dyn Fn(&Member) -> bool| {
                members
                    .iter()
                    .filter(|m| eligible(m) && also(m))
                    .filter_map(|m| m.region)
                    .fold(RegionSet::EMPTY, RegionSet::with)
            };
            let mut healthy = healthy_regions(&fresh);
            if allowed.intersect(healthy).is_empty() {
                healthy = healthy_regions(&|_| true);
            }
            Some(snapshot.pick_region(route, allowed, healthy, n as u64)?)
        };
        let in_region = |m: &Member| eligible(m) && region.is_none_or(|r| m.region == Some(r));
        let tiers: [&dyn Fn(&Member) -> bool; 2] = [&|m| in_region(m) && fresh(m), &in_region];
        for tier in tiers {
            let count = members.iter().filter(|m| tier(m)).count();
            if count == 0 {
                continue;
            }
            let nth = |i: usize| members.iter().filter(|m| tier(m)).nth(i % count);
            if self.weighted {
                let slow_start_ms = self.config.slow_start.as_millis() as u64;
                let weight = |m: &Member| m.health.weight_now(m.weight, slow_start_ms, now);
                let total: u64 = members.iter().filter(|m| tier(m)).map(|m| weight(m)).sum();
                let by_weight = |i: usize| {
                    let mut at = spread(i as u64, total);
                    members
                        .iter()
                        .filter(|m| tier(m))
                        .find(|m| {
                            let w = weight(m);
                            let here = at < w;
                            at = at.saturating_sub(w);
                            here
                        })
                        // A weight that grew since the sum: the plain turn.
                        .or_else(|| nth(i))
                };
                let chosen = match self.config.lb {
                    LbPolicy::RoundRobin => by_weight(n),
                    LbPolicy::LeastRequest => {
                        // Power of two choices, each by weight, compared by requests per weight.
                        let (a, b) = (by_weight(n), by_weight(n.wrapping_add(count)));
                        match (a, b) {
                            (Some(a), Some(b))
                                if b.health.in_flight.load(Ordering::Relaxed) * weight(a)
                                    < a.health.in_flight.load(Ordering::Relaxed) * weight(b) =>
                            {
                                Some(b)
                            }
                            (a, _) => a,
                        }
                    }
                };
                return chosen.map(Arc::clone);
            }
            let chosen = match self.config.lb {
                LbPolicy::RoundRobin => nth(n),
                LbPolicy::LeastRequest => {
                    // Power of two choices: two positions from the counter.
                    let a = nth(n);
                    let b = nth(n.wrapping_mul(7).wrapping_add(1 + n / count));
                    match (a, b) {
                        (Some(a), Some(b))
                            if b.health.in_flight.load(Ordering::Relaxed)
                                < a.health.in_flight.load(Ordering::Relaxed) =>
                        {
                            Some(b)
                        }
                        (a, _) => a,
                    }
                }
            };
            return chosen.map(Arc::clone);
        }
        None
    }

    /// The members a request may use, whatever their health now: where it may wait for a
    /// slot (health is judged when one is free). With regions declared, only those both
    /// `allowed` and in the route's policy ([`Snapshot::policy_regions`]), as [`Self::pick`]
    /// chooses. `avoid` (the member a retry follows) is left out while another of them takes
    /// traffic, as `pick` skips it.
    pub fn may_use(&self, ask: &Ask<'_>) -> Vec<Arc<Member>> {
        let snapshot = ask.snapshot;
        let regions = (!snapshot.regions.is_empty())
            .then(|| ask.allowed.intersect(snapshot.policy_regions(ask.route)));
        let mut may_use: Vec<Arc<Member>> = self
            .members
            .load()
            .iter()
            .filter(|m| m.serves(ask.version, regions))
            .cloned()
            .collect();
        if let Some(avoid) = ask.avoid {
            let avoided = |m: &Arc<Member>| std::ptr::eq(&**m, avoid);
            if may_use
                .iter()
                .any(|m| !avoided(m) && m.health.available(ask.now))
            {
                may_use.retain(|m| !avoided(m));
            }
        }
        may_use
    }

    /// True when some available member with `version` lies in `allowed` (or, without
    /// declared regions, anywhere). Used to keep a rollout's split inside residency.
    pub fn can_serve(
        &self,
        version: Option<&str>,
        allowed: RegionSet,
        regions_declared: bool,
    ) -> bool {
        let now = clock::now_ms();
        let regions = regions_declared.then_some(allowed);
        self.members
            .load()
            .iter()
            .any(|m| m.serves(version, regions) && m.health.available(now))
    }

    /// True when one more retry fits the budget: retries in flight stay below
    /// max(3, budget_ratio × requests in flight).
    pub fn retry_allowed(&self) -> bool {
        let active = self.in_flight.load(Ordering::Relaxed) as f64;
        let retries = self.retries_in_flight.load(Ordering::Relaxed) as f64;
        retries < (self.config.retries.budget_ratio * active).max(3.0)
    }

    pub fn has_dns(&self) -> bool {
        self.config
            .endpoints
            .iter()
            .any(|e| matches!(e.address, Address::Dns { .. }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runtime(text: &str) -> (routes::Snapshot, ClusterRuntime) {
        let s = routes::load(text).expect("config");
        let cluster = s.clusters[0].clone();
        let registry = HealthRegistry::default();
        let mut members = Vec::new();
        for e in &cluster.endpoints {
            if let Address::Ip(a) = e.address {
                members.extend(ClusterRuntime::members_for(&cluster, e, &[a], &registry));
            }
        }
        let client = build_client(&cluster).expect("plain HTTP client");
        let rt = ClusterRuntime::new(cluster, client, members, registry.waitlist("app"));
        rt.apply_limits();
        (s, rt)
    }

    const CONFIG: &str = r#"
[server]
region = "us"
[regions]
us = { jurisdiction = "us" }
eu = { jurisdiction = "eu" }
[residency]
eu = ["eu"]
[clusters.app]
outlier = { consecutive_failures = 2, ejection_time = "10s" }
endpoints = [
  { address = "127.0.0.1:1001", region = "us", version = "stable" },
  { address = "127.0.0.1:1002", region = "us", version = "stable" },
  { address = "127.0.0.1:1003", region = "eu", version = "stable" },
  { address = "127.0.0.1:1004", region = "us", version = "canary" },
]
[[routes]]
cluster = "app"
version = "stable"
[[routes]]
path_prefix = "/canary"
cluster = "app"
version = "canary"
"#;

    /// What a request on `route` for `version` asks, at the time now (read per ask, as a
    /// request does).
    fn ask<'a>(
        s: &'a Snapshot,
        route: &'a Route,
        version: Option<&'a str>,
        allowed: RegionSet,
        avoid: Option<&'a Member>,
    ) -> Ask<'a> {
        Ask {
            snapshot: s,
            route,
            version,
            allowed,
            avoid,
            now: clock::now_ms(),
        }
    }

    /// A pick of `route`'s own version.
    fn pick(
        rt: &ClusterRuntime,
        s: &Snapshot,
        route: &Route,
        allowed: RegionSet,
        avoid: Option<&Member>,
    ) -> Option<Arc<Member>> {
        rt.pick(&ask(s, route, route.version.as_deref(), allowed, avoid))
    }

    fn port(m: &Member) -> u16 {
        m.addr.port()
    }

    #[tokio::test]
    async fn members_take_requests_in_proportion_to_their_weight_interleaved() {
        for lb in ["round_robin", "least_request"] {
            let (s, rt) = runtime(&format!(
                "[clusters.app]\nlb = \"{lb}\"\nendpoints = [{{ address = \"127.0.0.1:1001\" }}, {{ address = \"127.0.0.1:1002\", weight = 3 }}, {{ address = \"127.0.0.1:1003\", weight = 6 }}]\n[[routes]]\ncluster = \"app\"\n"
            ));
            let route = &s.routes[0];
            let picks: Vec<u16> = (0..1000)
                .map(|_| port(&pick(&rt, &s, route, s.all_regions(), None).expect("pick")))
                .collect();
            let share = |p: u16, of: &[u16]| of.iter().filter(|x| **x == p).count();
            // 1 : 3 : 6, to within a few requests over a thousand.
            for (p, want) in [(1001, 100), (1002, 300), (1003, 600)] {
                let got = share(p, &picks);
                assert!(
                    got.abs_diff(want) <= 3,
                    "{lb}: {p} took {got} of 1000, not ~{want}"
                );
            }
            // Interleaved: every ten consecutive requests hold each member's share, near enough.
            for (i, ten) in picks.windows(10).enumerate() {
                assert!(share(1003, ten).abs_diff(6) <= 2, "{lb}: {ten:?} at {i}");
                assert!(share(1001, ten) <= 2, "{lb}: {ten:?} at {i}");
            }
        }
        // Least request still prefers the less loaded of its two choices, per weight: the
        // heavy member with 60 requests in flight (10 per weight) loses to the idle light one
        // whenever that is one of the two, ~27 in 100 (1 - (6/7)²), above its weight's 1/7.
        let (s, rt) = runtime(
            "[clusters.app]\nlb = \"least_request\"\nendpoints = [{ address = \"127.0.0.1:1001\" }, { address = \"127.0.0.1:1002\", weight = 6 }]\n[[routes]]\ncluster = \"app\"\n",
        );
        let heavy = rt.members.load()[1].clone();
        heavy.health.in_flight.store(60, Ordering::Relaxed);
        let picks: Vec<u16> = (0..100)
            .map(|_| port(&pick(&rt, &s, &s.routes[0], s.all_regions(), None).expect("pick")))
            .collect();
        assert!(
            picks.iter().filter(|p| **p == 1001).count() > 20,
            "the idle light member takes more than its weight's 1/7: {picks:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_endpoint_back_in_service_takes_a_growing_share_over_its_slow_start() {
        let (s, rt) = runtime(
            "[clusters.app]\nslow_start = \"10s\"\noutlier = { consecutive_failures = 1, ejection_time = \"5s\" }\nhealth_check = { path = \"/h\", healthy_threshold = 1, unhealthy_threshold = 1 }\nendpoints = [{ address = \"127.0.0.1:1001\" }, { address = \"127.0.0.1:1002\" }]\n[[routes]]\ncluster = \"app\"\n",
        );
        let route = &s.routes[0];
        // The share of 1001 over a thousand picks now.
        let share = || {
            (0..1000)
                .filter(|_| {
                    port(&pick(&rt, &s, route, s.all_regions(), None).expect("pick")) == 1001
                })
                .count()
        };
        assert!(share().abs_diff(500) <= 3, "never out: its whole weight");
        let back = rt.members.load()[0].clone();
        let outlier = rt.config.outlier;
        assert!(back.health.record_live(false, &outlier), "ejected");
        assert_eq!(share(), 0);
        // Its ejection runs out: a tenth of its weight (0.1 / 1.1 of the picks), then a share
        // growing with the time since — half way, 0.55 / 1.55 — and all of it at the end.
        tokio::time::advance(std::time::Duration::from_secs(5)).await;
        // An outcome clears the ejection run out (the ramp is kept from its end).
        assert!(!back.health.record_live(true, &outlier));
        assert!(share().abs_diff(91) <= 3, "{}", share());
        tokio::time::advance(std::time::Duration::from_secs(5)).await;
        assert!(share().abs_diff(355) <= 3, "{}", share());
        tokio::time::advance(std::time::Duration::from_secs(5)).await;
        assert!(share().abs_diff(500) <= 3, "{}", share());
        // Failing its health checks and passing them again starts it over, from the pass.
        back.health.record_check(false, 1, 1);
        assert_eq!(share(), 0);
        tokio::time::advance(std::time::Duration::from_secs(60)).await;
        back.health.record_check(true, 1, 1);
        assert!(share().abs_diff(91) <= 3, "{}", share());
        tokio::time::advance(std::time::Duration::from_secs(10)).await;
        assert!(share().abs_diff(500) <= 3, "{}", share());
    }

    fn eu_only(s: &Snapshot) -> RegionSet {
        s.allowed_regions(s.jurisdiction_named("eu").expect("eu"))
            .expect("restricted")
    }

    #[tokio::test(start_paused = true)]
    async fn round_robin_prefers_local_region_and_version() {
        let (s, rt) = runtime(CONFIG);
        let (stable, canary) = (&s.routes[0], &s.routes[1]);
        let all = s.all_regions();
        let mut seen: Vec<u16> = (0..6)
            .map(|_| port(&pick(&rt, &s, stable, all, None).expect("member")))
            .collect();
        seen.sort_unstable();
        assert_eq!(seen, vec![1001, 1001, 1001, 1002, 1002, 1002]);
        assert_eq!(
            port(&pick(&rt, &s, stable, eu_only(&s), None).expect("m")),
            1003
        );
        assert_eq!(port(&pick(&rt, &s, canary, all, None).expect("m")), 1004);
        // No canary in the EU: an EU-restricted canary request has nowhere to go.
        assert!(pick(&rt, &s, canary, eu_only(&s), None).is_none());
    }

    /// With `max_ejection_percent = 50`, two of the cluster's four endpoints may be out at
    /// once: a third that fails as often stays in (and starts its count again), until one of
    /// the two comes back. At 10 %, one may always be ejected.
    #[tokio::test(start_paused = true)]
    async fn ejections_stop_at_the_clusters_cap() {
        let capped = CONFIG.replace(
            r#"ejection_time = "10s" }"#,
            r#"ejection_time = "10s", max_ejection_percent = 50 }"#,
        );
        let (_, rt) = runtime(&capped);
        let outlier = rt.config.outlier;
        assert_eq!(outlier.max_ejection_percent, 50);
        let members = rt.members.load_full();
        let fails = |m: &Member| fail_twice(m, &outlier);
        assert!(fails(&members[0]));
        // An ejected endpoint failing again (a request it took before) stays ejected.
        assert!(fails(&members[0]));
        assert!(fails(&members[1]));
        assert!(!fails(&members[2]), "a third of four would be over 50 %");
        assert!(!members[2].health.ejected(clock::now_ms()));
        assert!(!fails(&members[3]));
        // The first two come back when their time runs out; the third may go then.
        tokio::time::advance(outlier.ejection_time).await;
        assert!(fails(&members[2]));

        let (_, rt) = runtime(&CONFIG.replace(
            r#"ejection_time = "10s" }"#,
            r#"ejection_time = "10s", max_ejection_percent = 10 }"#,
        ));
        let members = rt.members.load_full();
        assert!(
            fail_twice(&members[3], &rt.config.outlier),
            "one always may"
        );
        assert!(!fail_twice(&members[0], &rt.config.outlier));
    }

    /// `failure_percentage = 50` over 10 s intervals with 10 requests at least, and no
    /// ejection on failures in a row: an endpoint failing 12 of 20 is ejected by the first
    /// outcome after the interval; one failing 8 of 20, or 5 of 5 (too few to judge), is not.
    /// The next interval starts afresh.
    #[tokio::test(start_paused = true)]
    async fn an_endpoint_failing_too_often_is_ejected_at_its_intervals_end() {
        let (_, rt) = runtime(&CONFIG.replace(
            r#"outlier = { consecutive_failures = 2, ejection_time = "10s" }"#,
            r#"outlier = { consecutive_failures = 0, ejection_time = "10s", failure_percentage = 50, failure_percentage_min_requests = 10 }"#,
        ));
        let outlier = rt.config.outlier;
        let members = rt.members.load_full();
        let (often, seldom, few) = (&members[0].health, &members[1].health, &members[2].health);
        for i in 0..20 {
            assert!(
                !often.record_live(i >= 12, &outlier),
                "not before the interval ends"
            );
            assert!(!seldom.record_live(i >= 8, &outlier));
        }
        for _ in 0..5 {
            assert!(!few.record_live(false, &outlier));
        }
        tokio::time::advance(std::time::Duration::from_secs(10)).await;
        assert!(often.record_live(true, &outlier), "12 of 21 failed");
        assert!(!seldom.record_live(true, &outlier), "8 of 21");
        assert!(
            !few.record_live(true, &outlier),
            "6 outcomes are too few to judge"
        );
        assert!(often.ejected(clock::now_ms()));
        // The next interval counts only its own outcomes: 9 failures and the success that
        // judges them.
        for _ in 0..9 {
            assert!(!seldom.record_live(false, &outlier));
        }
        tokio::time::advance(std::time::Duration::from_secs(10)).await;
        assert!(
            seldom.record_live(true, &outlier),
            "9 of 10 in its second interval"
        );
    }

    /// An ejection is logged once, as a warning, with what it was for: the cluster, the
    /// endpoint, the reason and its numbers.
    #[test]
    fn an_ejection_is_logged_with_its_reason() {
        #[derive(Clone, Default)]
        struct Lines(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Lines {
            fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
                self.0.lock().expect("lines").extend_from_slice(data);
                Ok(data.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let lines = Lines::default();
        let writer = lines.clone();
        let subscriber = tracing_subscriber::fmt()
            .json()
            .flatten_event(true)
            .with_writer(move || writer.clone())
            .finish();
        let outlier = routes::Outlier {
            consecutive_failures: 2,
            ejection_time: std::time::Duration::from_secs(30),
            max_ejection_percent: 100,
            failure_percentage: None,
        };
        tracing::subscriber::with_default(subscriber, || {
            let health = MemberHealth::alone("app", "127.0.0.1:7");
            assert!(!health.record_live(false, &outlier));
            assert!(health.record_live(false, &outlier));
        });
        let text = String::from_utf8(lines.0.lock().expect("lines").clone()).expect("UTF-8");
        let logged: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).expect("a JSON line"))
            .filter(|v: &serde_json::Value| v["message"] == "endpoint ejected")
            .collect();
        assert_eq!(logged.len(), 1, "{text}");
        let line = &logged[0];
        assert_eq!(line["level"], "WARN");
        assert_eq!(line["cluster"], "app");
        assert_eq!(line["endpoint"], "127.0.0.1:7");
        assert_eq!(line["reason"], "failures in a row");
        assert_eq!(line["failures"], 2);
        assert_eq!(line["ejection_s"], 30.0);
    }

    /// Two failures in a row at `m`: whether either ejected it.
    fn fail_twice(m: &Member, outlier: &routes::Outlier) -> bool {
        let first = m.health.record_live(false, outlier);
        first || m.health.record_live(false, outlier)
    }

    #[tokio::test(start_paused = true)]
    async fn ejection_fails_over_within_what_is_allowed_and_expires() {
        let (s, rt) = runtime(CONFIG);
        let stable = &s.routes[0];
        let outlier = rt.config.outlier;
        let members = rt.members.load_full();
        for m in members.iter().filter(|m| m.region == s.region_named("us")) {
            assert!(!m.health.record_live(false, &outlier));
            assert!(
                m.health.record_live(false, &outlier),
                "second failure ejects"
            );
        }
        // Both local stable members ejected: the eu one takes unrestricted traffic.
        assert_eq!(
            port(&pick(&rt, &s, stable, s.all_regions(), None).expect("m")),
            1003
        );
        // The EU member ejected too: every stable member is ejected. A request goes to one as
        // a probe, one per member and second, never outside what it may use; others get none.
        let eu = members.iter().find(|m| port(m) == 1003).expect("eu");
        eu.health.record_live(false, &outlier);
        eu.health.record_live(false, &outlier);
        assert!(eu.health.ejected(clock::now_ms()));
        assert_eq!(
            port(&pick(&rt, &s, stable, eu_only(&s), None).expect("probe")),
            1003
        );
        assert!(pick(&rt, &s, stable, eu_only(&s), None).is_none());
        let mut probed: Vec<u16> = (0..2)
            .map(|_| port(&pick(&rt, &s, stable, s.all_regions(), None).expect("probe")))
            .collect();
        probed.sort_unstable();
        assert_eq!(probed, [1001, 1002], "the local members, one probe each");
        assert!(pick(&rt, &s, stable, s.all_regions(), None).is_none());
        tokio::time::advance(std::time::Duration::from_millis(PROBE_INTERVAL_MS)).await;
        assert_eq!(
            port(&pick(&rt, &s, stable, eu_only(&s), None).expect("probe")),
            1003
        );
        // An answered probe ends the ejection: no probe needed after it.
        eu.health.restore();
        for _ in 0..3 {
            assert_eq!(
                port(&pick(&rt, &s, stable, eu_only(&s), None).expect("m")),
                1003
            );
        }
        // Active checks take a member out for good: never probed, an EU request gets nothing
        // rather than the US.
        eu.health.record_live(false, &outlier);
        eu.health.record_live(false, &outlier);
        eu.health.record_check(false, 1, 1);
        tokio::time::advance(std::time::Duration::from_millis(PROBE_INTERVAL_MS)).await;
        assert!(pick(&rt, &s, stable, eu_only(&s), None).is_none());
        eu.health.record_check(true, 1, 1);
        tokio::time::advance(std::time::Duration::from_secs(11)).await;
        assert_ne!(
            port(&pick(&rt, &s, stable, s.all_regions(), None).expect("m")),
            1003
        );
    }

    #[tokio::test(start_paused = true)]
    async fn active_checks_flip_after_thresholds() {
        let (_s, rt) = runtime(CONFIG);
        let m = Arc::clone(&rt.members.load()[0]);
        m.health.record_check(false, 2, 3);
        m.health.record_check(false, 2, 3);
        assert!(m.health.active_ok());
        m.health.record_check(true, 2, 3); // streak broken
        m.health.record_check(false, 2, 3);
        m.health.record_check(false, 2, 3);
        assert!(m.health.active_ok());
        m.health.record_check(false, 2, 3);
        assert!(!m.health.active_ok());
        m.health.record_check(true, 2, 3);
        assert!(!m.health.active_ok());
        m.health.record_check(true, 2, 3);
        assert!(m.health.active_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn avoid_skips_the_failed_member_but_never_leaves_the_allowed_set() {
        let (s, rt) = runtime(CONFIG);
        let (stable, canary) = (&s.routes[0], &s.routes[1]);
        let all = s.all_regions();
        for _ in 0..10 {
            let first = pick(&rt, &s, stable, all, None).expect("m");
            let second = pick(&rt, &s, stable, all, Some(&first)).expect("m");
            assert_ne!(first.addr, second.addr);
        }
        let only = pick(&rt, &s, canary, all, None).expect("m");
        assert_eq!(
            pick(&rt, &s, canary, all, Some(&only)).expect("m").addr,
            only.addr
        );
        // The only EU member failed: the retry goes to it again, not to the US.
        let eu = pick(&rt, &s, stable, eu_only(&s), None).expect("m");
        assert_eq!(
            port(&pick(&rt, &s, stable, eu_only(&s), Some(&eu)).expect("m")),
            1003
        );
    }

    #[tokio::test(start_paused = true)]
    async fn least_request_avoids_busy_members() {
        let text = CONFIG.replace("[clusters.app]", "[clusters.app]\nlb = \"least_request\"");
        let (s, rt) = runtime(&text);
        let members = rt.members.load_full();
        members[0].health.in_flight.store(100, Ordering::Relaxed);
        let picks = (0..100)
            .filter(|_| {
                port(&pick(&rt, &s, &s.routes[0], s.all_regions(), None).expect("m")) == 1002
            })
            .count();
        assert!(
            picks > 50,
            "busy member still picked {} of 100",
            100 - picks
        );
    }

    fn limits(max_queued: u32) -> Limits {
        Limits {
            max_per_endpoint: 1,
            max_queued,
            queue_timeout: std::time::Duration::from_secs(1),
        }
    }

    fn capped(cap: u32) -> Arc<MemberHealth> {
        let h = HealthRegistry::default().get("app", "127.0.0.1:1".parse().expect("addr"));
        h.set_cap(cap, 1);
        h
    }

    fn taken(h: &MemberHealth) -> Slot {
        h.try_slot()
            .expect("a free slot")
            .expect("a slot (the endpoint is capped)")
    }

    /// [`CONFIG`]'s cluster with a cap of 1 on each endpoint.
    fn capped_runtime() -> (Snapshot, ClusterRuntime) {
        runtime(&CONFIG.replace(
            "[clusters.app]",
            "[clusters.app]\nlimits = { max_requests_per_endpoint = 1 }",
        ))
    }

    fn full(h: &MemberHealth) -> bool {
        h.try_slot().is_err()
    }

    /// The cluster's queue: a slot given back at an endpoint goes to the longest waiter that
    /// may use it — past one restricted to another region — whichever endpoint it was; the
    /// queue is bounded, and a wait ends at the queue timeout or when the client goes away.
    #[tokio::test(start_paused = true)]
    async fn the_cluster_queue_gives_each_slot_to_the_longest_waiter_that_may_use_it() {
        let (s, rt) = capped_runtime();
        let rt = Arc::new(rt);
        let members = rt.members.load_full();
        let by_port = |p: u16| Arc::clone(members.iter().find(|m| port(m) == p).expect("m"));
        let (us_1, us_2, eu) = (by_port(1001), by_port(1002), by_port(1003));
        let mut held: Vec<Slot> = [&us_1, &us_2, &eu, &by_port(1004)]
            .iter()
            .map(|m| taken(&m.health))
            .collect();
        let three = limits(3);
        let wait = |allowed: RegionSet| {
            let rt = Arc::clone(&rt);
            let may_use = rt.may_use(&ask(&s, &s.routes[0], Some("stable"), allowed, None));
            tokio::spawn(async move {
                let got = rt.waitlist.wait(may_use, &three).await;
                got.map(|(m, slot)| (port(&m), slot))
            })
        };
        // Queued in this order: one that may only use the EU endpoint, then two that may use
        // any stable one.
        let eu_first = wait(eu_only(&s));
        tokio::task::yield_now().await;
        let any_second = wait(s.all_regions());
        tokio::task::yield_now().await;
        let any_third = wait(s.all_regions());
        tokio::task::yield_now().await;
        assert_eq!(rt.waitlist.waiting(), 3);
        let refused = rt.waitlist.wait(
            rt.may_use(&ask(&s, &s.routes[0], None, s.all_regions(), None)),
            &three,
        );
        assert_eq!(refused.await.err(), Some(Busy::QueueFull));
        let none = limits(0);
        let none_queued = rt.waitlist.wait(
            rt.may_use(&ask(&s, &s.routes[0], None, s.all_regions(), None)),
            &none,
        );
        assert_eq!(none_queued.await.err(), Some(Busy::QueueFull));
        // A US slot given back: not to the EU request, to the next.
        drop(held.remove(0));
        let (p, slot_a) = any_second.await.expect("task").expect("a slot");
        assert_eq!(p, 1001);
        assert!(slot_a.is_some() && !eu_first.is_finished() && !any_third.is_finished());
        // The EU slot: to the EU request, first in line.
        drop(held.remove(1));
        let (p, slot_b) = eu_first.await.expect("task").expect("a slot");
        assert_eq!(p, 1003);
        // The other US endpoint's slot: to the last one, whichever endpoint it was queued at.
        drop(held.remove(0));
        let (p, slot_c) = any_third.await.expect("task").expect("a slot");
        assert_eq!(p, 1002);
        assert_eq!(rt.waitlist.waiting(), 0);
        // Nobody gives one back: the wait ends at the queue timeout.
        let start = tokio::time::Instant::now();
        let late = wait(s.all_regions()).await.expect("task");
        assert_eq!(late.err(), Some(Busy::QueueTimeout));
        assert_eq!(start.elapsed(), three.queue_timeout);
        // A waiter whose client went away leaves the queue, and the slot given back after it
        // is not lost with it.
        let gone = wait(s.all_regions());
        tokio::task::yield_now().await;
        assert_eq!(rt.waitlist.waiting(), 1);
        {
            // Those served through another endpoint's line and the one that timed out left
            // the lines as their waits ended: the lines hold this one alone.
            let lines = rt.waitlist.lines();
            assert_eq!(lines.give.len(), 1);
            assert_eq!(lines.by_endpoint.len(), 3);
            assert!(lines.by_endpoint.values().all(|l| l.len() == 1));
        }
        gone.abort();
        assert!(gone.await.expect_err("aborted").is_cancelled());
        assert_eq!(rt.waitlist.waiting(), 0);
        drop(slot_c);
        assert!(us_2.health.has_room());
        let slot_c = taken(&us_2.health);
        // An ejected endpoint's slot goes to nobody; the next one elsewhere does.
        let outlier = rt.config.outlier;
        while !us_2.health.record_live(false, &outlier) {}
        let after_ejection = wait(s.all_regions());
        tokio::task::yield_now().await;
        drop(slot_c);
        tokio::task::yield_now().await;
        assert!(!after_ejection.is_finished());
        drop(slot_a);
        let (p, slot_a) = after_ejection.await.expect("task").expect("a slot");
        assert_eq!(p, 1001);
        // Back (a probe answered): its free slot goes to the request waiting.
        let after_return = wait(s.all_regions());
        tokio::task::yield_now().await;
        assert!(!after_return.is_finished());
        us_2.health.restore();
        let (p, slot_c) = after_return.await.expect("task").expect("a slot");
        assert_eq!(p, 1002);
        // The cap lifted: the waiters that may use the endpoint go without a slot; raised: the
        // new slot goes to the next waiter.
        let lifted = wait(s.all_regions());
        tokio::task::yield_now().await;
        us_1.health.set_cap(0, u64::MAX);
        assert!(matches!(lifted.await.expect("task"), Ok((1001, None))));
        // A request that comes to wait while an endpoint it may use has room goes there.
        let all = rt.may_use(&ask(
            &s,
            &s.routes[0],
            Some("stable"),
            s.all_regions(),
            None,
        ));
        let at_once = rt.waitlist.wait(all, &three).await;
        assert!(matches!(at_once, Ok((ref m, None)) if port(m) == 1001));
        let raised = wait(eu_only(&s));
        tokio::task::yield_now().await;
        eu.health.set_cap(2, u64::MAX);
        let (p, more) = raised.await.expect("task").expect("a slot");
        assert!(p == 1003 && more.is_some());
        drop((slot_a, slot_b, slot_c, more, held));
        // Every wait over: nothing is left in the lines.
        let lines = rt.waitlist.lines();
        assert!(lines.give.is_empty() && lines.by_endpoint.is_empty());
    }

    #[test]
    fn a_cap_lowered_closes_slots_as_they_come_back_and_raised_opens_them() {
        let h = capped(3);
        let mut slots: Vec<Slot> = (0..3).map(|_| taken(&h)).collect();
        assert_eq!(h.slots(), Some((3, 3)));
        h.set_cap(1, 1);
        assert_eq!(h.slots(), Some((1, 3)));
        // Three taken against a cap of one: the first two given back close.
        slots.pop();
        assert!(full(&h));
        slots.pop();
        assert!(full(&h));
        slots.pop();
        slots.push(taken(&h));
        assert!(full(&h));
        // Raised: the new slot opens at once.
        h.set_cap(2, 1);
        slots.push(taken(&h));
        assert!(full(&h));
        // Lowered and raised while over: what is owed is forgiven first.
        h.set_cap(1, 1);
        h.set_cap(2, 1);
        assert!(full(&h));
        slots.pop();
        slots.push(taken(&h));
        assert!(full(&h));
        // Off: no slot needed; on again: a fresh count (requests from before hold none).
        h.set_cap(0, 1);
        assert!(matches!(h.try_slot(), Ok(None)));
        assert_eq!(h.slots(), None);
        h.set_cap(1, 1);
        let _one = taken(&h);
        assert!(full(&h));
        drop(slots);
        assert!(full(&h), "slots of the old gate do not open the new one");
        // A runtime older than the one that set the cap last changes nothing.
        h.set_cap(5, 2);
        h.set_cap(0, 1);
        let _more = taken(&h);
        assert!(!full(&h), "the cap of generation 2 stands");
    }

    #[tokio::test(start_paused = true)]
    async fn members_with_a_free_slot_come_first_and_a_full_set_still_picks_one() {
        let (s, rt) = capped_runtime();
        let stable = &s.routes[0];
        let all = s.all_regions();
        let members = rt.members.load_full();
        let by_port = |p: u16| members.iter().find(|m| port(m) == p).expect("member");
        let _held = taken(&by_port(1001).health);
        for _ in 0..4 {
            assert_eq!(port(&pick(&rt, &s, stable, all, None).expect("m")), 1002);
        }
        // The local region full: its share goes to the region with room.
        let _held_too = taken(&by_port(1002).health);
        assert_eq!(port(&pick(&rt, &s, stable, all, None).expect("m")), 1003);
        // Everything full: the request still gets a member to wait at, inside what it may use.
        let _eu = taken(&by_port(1003).health);
        assert!(pick(&rt, &s, stable, all, None).is_some());
        assert_eq!(
            port(&pick(&rt, &s, stable, eu_only(&s), None).expect("m")),
            1003
        );
    }

    /// Where a request may wait: its version, its allowed regions, and the regions its route's
    /// policy can choose — never a region a failover order leaves out or a weight of 0.
    #[tokio::test]
    async fn a_request_waits_only_where_its_route_may_go() {
        let text = format!(
            "{CONFIG}[[routes]]\npath_prefix = \"/us\"\ncluster = \"app\"\nversion = \"stable\"\nfailover = [\"us\"]\n[[routes]]\npath_prefix = \"/weighted\"\ncluster = \"app\"\nversion = \"stable\"\nregional_weights = {{ us = 0, eu = 1 }}\n"
        );
        let (s, rt) = runtime(&text);
        let members = rt.members.load_full();
        let by_port = |p: u16| members.iter().find(|m| port(m) == p).expect("member");
        let ports_avoiding = |route: usize, version: &str, allowed: RegionSet, avoid: u16| {
            let avoid = (avoid > 0).then(|| &**by_port(avoid));
            let mut p: Vec<u16> = rt
                .may_use(&ask(&s, &s.routes[route], Some(version), allowed, avoid))
                .iter()
                .map(|m| port(m))
                .collect();
            p.sort_unstable();
            p
        };
        let ports = |route: usize, version: &str, allowed: RegionSet| {
            ports_avoiding(route, version, allowed, 0)
        };
        let all = s.all_regions();
        assert_eq!(ports(0, "stable", all), [1001, 1002, 1003]);
        assert_eq!(ports(0, "stable", eu_only(&s)), [1003]);
        assert_eq!(ports(1, "canary", all), [1004]);
        assert_eq!(ports(2, "stable", all), [1001, 1002]);
        assert!(ports(2, "stable", eu_only(&s)).is_empty());
        assert_eq!(ports(3, "stable", all), [1003]);
        // A retry waits elsewhere than the member that failed it, while another takes traffic.
        assert_eq!(ports_avoiding(0, "stable", all, 1001), [1002, 1003]);
        assert_eq!(ports_avoiding(0, "stable", eu_only(&s), 1003), [1003]);
        let outlier = rt.config.outlier;
        for p in [1002, 1003] {
            while !by_port(p).health.record_live(false, &outlier) {}
        }
        assert_eq!(ports_avoiding(0, "stable", all, 1001), [1001, 1002, 1003]);
    }

    /// An ejection whose time runs out with nothing else happening still gives the endpoint's
    /// free slot to the request waiting for it, and the gauge back.
    #[tokio::test(start_paused = true)]
    async fn an_ejection_that_runs_out_serves_the_line() {
        let (s, rt) = capped_runtime();
        let rt = Arc::new(rt);
        let members = rt.members.load_full();
        let by_port = |p: u16| Arc::clone(members.iter().find(|m| port(m) == p).expect("m"));
        let (us_1, us_2) = (by_port(1001), by_port(1002));
        let _held = [&us_1, &by_port(1003)].map(|m| taken(&m.health));
        let slot = taken(&us_2.health);
        let outlier = rt.config.outlier;
        let start = tokio::time::Instant::now();
        while !us_2.health.record_live(false, &outlier) {}
        drop(slot);
        let patient = Limits {
            queue_timeout: outlier.ejection_time * 3,
            ..limits(3)
        };
        let may_use = rt.may_use(&ask(
            &s,
            &s.routes[0],
            Some("stable"),
            s.all_regions(),
            None,
        ));
        let waiter = {
            let rt = Arc::clone(&rt);
            tokio::spawn(async move { rt.waitlist.wait(may_use, &patient).await })
        };
        tokio::task::yield_now().await;
        assert!(
            !waiter.is_finished(),
            "the ejected endpoint's slot is withheld"
        );
        let (m, slot) = waiter.await.expect("task").expect("a slot");
        assert!(port(&m) == 1002 && slot.is_some());
        assert_eq!(start.elapsed(), outlier.ejection_time);
        assert_eq!(us_2.health.ejected_until.load(Ordering::Relaxed), 0);
    }
}
