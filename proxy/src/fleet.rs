//! fleet: front doors sharing rollout state (and optionally the config) through etcd.
//!
//! Keys under `/frontdoor/{fleet}/`:
//! - `rollouts/{route}`: the rollout's [`Record`] (weight, phase, reason, who).
//! - `members/{id}`: each front door's [`Member`] record, on a 5 s lease.
//! - `config`: optional TOML config; every member applies it as a reload (a bad one is
//!   rejected by each, with the errors in `/status`, and the last good config keeps serving).
//!
//! Local rollout changes (operator actions, the controller) are written with compare-and-swap
//! on the key's mod revision. On a conflict the newer record wins — except that a rollback
//! always wins over a shift: it is written again on top. A watch applies everyone else's
//! writes within one etcd round trip. When etcd is unreachable the front door keeps serving
//! its last state, reports `fleet: degraded`, queues its own changes and writes them when
//! etcd returns (so a rollback decided during an outage is not lost).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, PutOptions, Txn, TxnOp,
    WatchOptions,
};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::mpsc::UnboundedReceiver;

use crate::rollout::{Change, Phase};
use crate::state::Proxy;
use crate::telemetry;

/// How this front door joins a fleet.
#[derive(Debug, Clone)]
pub struct FleetOptions {
    pub endpoints: Vec<String>,
    pub name: String,
    /// This member's id (unique in the fleet).
    pub member: String,
}

/// A rollout's state as stored in etcd.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub weight: f64,
    pub phase: Phase,
    pub reason: Option<String>,
    pub action: String,
    pub actor: String,
    pub member: String,
    pub at_unix_ms: u64,
}

impl Record {
    fn is_rollback(&self) -> bool {
        self.phase == Phase::RolledBack
    }
}

/// A member's self-description, refreshed every second on its lease.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Member {
    pub id: String,
    pub region: Option<String>,
    pub version: String,
    pub config_hash: String,
    pub rollouts: HashMap<String, f64>,
    pub last_seen_unix_ms: u64,
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

pub(crate) fn prefix(name: &str) -> String {
    format!("/frontdoor/{name}/")
}

/// What the session keeps between etcd round trips.
#[derive(Default)]
struct Local {
    /// Mod revision of each rollout key as last seen (0: absent).
    revs: HashMap<String, i64>,
    /// Our changes not yet written.
    pending: HashMap<String, Record>,
    /// Mod revision of the config key last applied.
    config_rev: i64,
    config_errors: Vec<String>,
    members: Vec<Member>,
    last_error: Option<String>,
    connected: bool,
}

/// Starts the fleet task: joins, syncs, watches; reconnects forever.
pub fn spawn(proxy: Arc<Proxy>, opts: FleetOptions) {
    let changes = proxy.rollouts.subscribe();
    tokio::spawn(run(proxy, opts, changes));
}

async fn run(proxy: Arc<Proxy>, opts: FleetOptions, mut changes: UnboundedReceiver<Change>) {
    let mut local = Local::default();
    publish_status(&proxy, &opts, &local);
    loop {
        let result = async {
            let options = ConnectOptions::new()
                .with_connect_timeout(Duration::from_secs(2))
                .with_timeout(Duration::from_secs(3))
                .with_keep_alive(Duration::from_secs(1), Duration::from_secs(2));
            let client = Client::connect(&opts.endpoints, Some(options))
                .await
                .map_err(|e| e.to_string())?;
            session(&proxy, &opts, client, &mut local, &mut changes).await
        }
        .await;
        if let Err(e) = result {
            if local.connected || local.last_error.is_none() {
                tracing::warn!(error = %e, fleet = %opts.name, "fleet degraded: etcd unreachable; serving the last known state");
            }
            local.connected = false;
            local.last_error = Some(e);
        }
        // Keep collecting local changes while disconnected.
        while let Ok(c) = changes.try_recv() {
            local
                .pending
                .insert(c.route.clone(), record_of(&c, &opts.member));
        }
        publish_status(&proxy, &opts, &local);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn record_of(c: &Change, member: &str) -> Record {
    Record {
        weight: c.weight,
        phase: c.phase,
        reason: c.reason.clone(),
        action: c.action.clone(),
        actor: c.actor.clone(),
        member: member.to_string(),
        at_unix_ms: unix_ms(),
    }
}

async fn session(
    proxy: &Arc<Proxy>,
    opts: &FleetOptions,
    mut client: Client,
    local: &mut Local,
    changes: &mut UnboundedReceiver<Change>,
) -> Result<(), String> {
    let e = |e: etcd_client::Error| e.to_string();
    let pre = prefix(&opts.name);
    let rollouts_pre = format!("{pre}rollouts/");
    let lease = client.lease_grant(5, None).await.map_err(e)?.id();
    let (mut keeper, mut keep_stream) = client.lease_keep_alive(lease).await.map_err(e)?;

    // Reconcile: what etcd has, then our queued changes on top (rollbacks win).
    let snapshot = client
        .get(pre.clone(), Some(GetOptions::new().with_prefix()))
        .await
        .map_err(e)?;
    let revision = snapshot.header().map_or(0, |h| h.revision());
    let mut remote: HashMap<String, (Record, i64)> = HashMap::new();
    for kv in snapshot.kvs() {
        let key = kv.key_str().map_err(e)?;
        if let Some(route) = key.strip_prefix(&rollouts_pre)
            && let Ok(r) = serde_json::from_slice::<Record>(kv.value())
        {
            remote.insert(route.to_string(), (r, kv.mod_revision()));
        } else if key == format!("{pre}config") {
            apply_config(
                proxy,
                local,
                kv.value_str().unwrap_or_default(),
                kv.mod_revision(),
            )
            .await;
        } else if key.starts_with(&format!("{pre}purge/")) {
            // A purge from the last minute that we missed while away.
            apply_purge(proxy, kv.value());
        }
    }
    local.connected = true;
    local.last_error = None;
    tracing::info!(fleet = %opts.name, member = %opts.member, "fleet connected");
    while let Ok(c) = changes.try_recv() {
        local
            .pending
            .insert(c.route.clone(), record_of(&c, &opts.member));
    }
    for (route, (record, rev)) in &remote {
        let seen = local.revs.get(route).copied();
        local.revs.insert(route.clone(), *rev);
        match local.pending.get(route) {
            // Ours is queued: it is written below, unless someone else wrote a newer state
            // while we were away and ours is not a rollback.
            Some(mine) if mine.is_rollback() || seen == Some(*rev) => {}
            Some(_) => {
                local.pending.remove(route);
                apply(proxy, route, record);
            }
            None => {
                apply(proxy, route, record);
            }
        }
    }
    // Rollouts the fleet has no record of yet: seed them with our state (create-only CAS).
    for (route, rr) in &proxy.rollouts.table().by_route {
        if !remote.contains_key(route) && !local.pending.contains_key(route) {
            local.revs.insert(route.clone(), 0);
            let s = &rr.state;
            local.pending.insert(
                route.clone(),
                Record {
                    weight: s.weight,
                    phase: s.phase,
                    reason: s.reason.clone(),
                    action: "seed".into(),
                    actor: "fleet".into(),
                    member: opts.member.clone(),
                    at_unix_ms: unix_ms(),
                },
            );
        }
    }
    let queued: Vec<String> = local.pending.keys().cloned().collect();
    for route in queued {
        write_pending(&mut client, proxy, &rollouts_pre, local, &route).await?;
    }

    let mut watch = client
        .watch(
            pre.clone(),
            Some(
                WatchOptions::new()
                    .with_prefix()
                    .with_start_revision(revision + 1),
            ),
        )
        .await
        .map_err(e)?;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            change = changes.recv() => {
                let Some(c) = change else { return Err("rollout channel closed".into()) };
                local.pending.insert(c.route.clone(), record_of(&c, &opts.member));
                write_pending(&mut client, proxy, &rollouts_pre, local, &c.route).await?;
            }
            msg = watch.message() => {
                let Some(resp) = msg.map_err(e)? else { return Err("etcd closed the watch".into()) };
                for ev in resp.events() {
                    let Some(kv) = ev.kv() else { continue };
                    let key = kv.key_str().map_err(e)?.to_string();
                    if let Some(id) = key.strip_prefix(&format!("{pre}acme/challenge/")) {
                        // Another member's ACME order: answer its challenges here too.
                        crate::acme::fleet_challenge(proxy, id, (ev.event_type() == EventType::Put).then(|| kv.value()));
                        continue;
                    }
                    if ev.event_type() != EventType::Put {
                        continue;
                    }
                    if let Some(route) = key.strip_prefix(&rollouts_pre) {
                        let rev = kv.mod_revision();
                        if local.revs.get(route).is_some_and(|r| *r >= rev) {
                            continue; // our own write, already applied
                        }
                        local.revs.insert(route.to_string(), rev);
                        if let Ok(r) = serde_json::from_slice::<Record>(kv.value()) {
                            if local.pending.get(route).is_some_and(|p| p.is_rollback()) && !r.is_rollback() {
                                // A queued rollback of ours beats a shift from elsewhere.
                                write_pending(&mut client, proxy, &rollouts_pre, local, route).await?;
                                continue;
                            }
                            local.pending.remove(route);
                            apply(proxy, route, &r);
                        }
                    } else if key == format!("{pre}config") {
                        apply_config(proxy, local, kv.value_str().unwrap_or_default(), kv.mod_revision()).await;
                        publish_status(proxy, opts, local);
                    } else if key.starts_with(&format!("{pre}purge/")) {
                        apply_purge(proxy, kv.value());
                    }
                }
            }
            ka = keep_stream.message() => {
                if ka.map_err(e)?.is_none() {
                    return Err("lease keep-alive stream ended".into());
                }
            }
            _ = tick.tick() => {
                keeper.keep_alive().await.map_err(e)?;
                let member = member_record(proxy, opts);
                let value = serde_json::to_vec(&member).map_err(|x| x.to_string())?;
                client.put(format!("{pre}members/{}", opts.member), value, Some(PutOptions::new().with_lease(lease))).await.map_err(e)?;
                let members = client.get(format!("{pre}members/"), Some(GetOptions::new().with_prefix())).await.map_err(e)?;
                local.members = members.kvs().iter().filter_map(|kv| serde_json::from_slice(kv.value()).ok()).collect();
                local.members.sort_by(|a, b| a.id.cmp(&b.id));
                publish_status(proxy, opts, local);
            }
        }
    }
}

/// Writes our queued record for `route` with compare-and-swap. On a conflict: a rollback is
/// written again on top; anything else yields to the newer record, which is applied.
async fn write_pending(
    client: &mut Client,
    proxy: &Arc<Proxy>,
    rollouts_pre: &str,
    local: &mut Local,
    route: &str,
) -> Result<(), String> {
    let e = |e: etcd_client::Error| e.to_string();
    let key = format!("{rollouts_pre}{route}");
    for _ in 0..5 {
        let Some(record) = local.pending.get(route).cloned() else {
            return Ok(());
        };
        let expected = local.revs.get(route).copied().unwrap_or(0);
        let value = serde_json::to_vec(&record).map_err(|x| x.to_string())?;
        let txn = Txn::new()
            .when([Compare::mod_revision(
                key.clone(),
                CompareOp::Equal,
                expected,
            )])
            .and_then([TxnOp::put(key.clone(), value, None)])
            .or_else([TxnOp::get(key.clone(), None)]);
        let resp = client.txn(txn).await.map_err(e)?;
        if resp.succeeded() {
            let rev = resp.header().map_or(expected + 1, |h| h.revision());
            local.revs.insert(route.to_string(), rev);
            local.pending.remove(route);
            return Ok(());
        }
        // Someone wrote first: see what.
        let current = client.get(key.clone(), None).await.map_err(e)?;
        let Some(kv) = current.kvs().first() else {
            local.revs.insert(route.to_string(), 0);
            continue;
        };
        local.revs.insert(route.to_string(), kv.mod_revision());
        let theirs: Option<Record> = serde_json::from_slice(kv.value()).ok();
        if record.is_rollback() || theirs.is_none() {
            continue; // write our rollback on top of the newer revision
        }
        local.pending.remove(route);
        if let Some(r) = theirs {
            apply(proxy, route, &r);
        }
        return Ok(());
    }
    Err(format!("{key}: too many concurrent writers"))
}

/// Applies another member's (or proxyctl's) record to the local rollout.
fn apply(proxy: &Proxy, route: &str, record: &Record) {
    proxy.rollouts.apply_remote(
        route,
        record.weight,
        record.phase,
        record.reason.clone(),
        &format!("fleet:{}", record.member),
    );
}

async fn apply_config(proxy: &Arc<Proxy>, local: &mut Local, text: &str, rev: i64) {
    if rev <= local.config_rev || text.trim().is_empty() {
        return;
    }
    local.config_rev = rev;
    match proxy.reload_text(text.to_string()).await {
        Ok(hash) => {
            local.config_errors.clear();
            tracing::info!(%hash, revision = rev, "fleet config applied");
        }
        Err(errors) => {
            tracing::error!(
                ?errors,
                revision = rev,
                "fleet config rejected; the last good config keeps serving"
            );
            local.config_errors = errors;
        }
    }
}

fn member_record(proxy: &Proxy, opts: &FleetOptions) -> Member {
    let active = proxy.active();
    let s = &active.snapshot;
    Member {
        id: opts.member.clone(),
        region: s.server.region.map(|r| s.region(r).name.clone()),
        version: env!("CARGO_PKG_VERSION").to_string(),
        config_hash: s.hash.clone(),
        rollouts: proxy
            .rollouts
            .table()
            .by_route
            .iter()
            .map(|(k, v)| (k.clone(), v.state.weight))
            .collect(),
        last_seen_unix_ms: unix_ms(),
    }
}

fn publish_status(proxy: &Proxy, opts: &FleetOptions, local: &Local) {
    telemetry::prometheus();
    metrics::gauge!(telemetry::FLEET_DEGRADED).set(if local.connected { 0.0 } else { 1.0 });
    let value = json!({
        "name": opts.name,
        "member": opts.member,
        "state": if local.connected { "ok" } else { "degraded" },
        "last_error": local.last_error,
        "pending_writes": local.pending.len(),
        "config_revision": local.config_rev,
        "config_errors": local.config_errors,
        "members": local.members,
    });
    *proxy.fleet_status.lock().unwrap_or_else(|p| p.into_inner()) = Some(value);
}

/// Applies a fleet purge record to this member's cache.
fn apply_purge(proxy: &Proxy, value: &[u8]) {
    let active = proxy.active_full();
    let Some(cache) = &active.cache.store else {
        return;
    };
    match serde_json::from_slice::<crate::cache::Purge>(value) {
        Ok(p) => {
            if let Err(e) = p.apply(cache) {
                tracing::warn!(error = %e, "fleet purge ignored");
            }
        }
        Err(e) => tracing::warn!(error = %e, "fleet purge record unreadable"),
    }
}

/// How long a fleet purge record stays in etcd: members that reconnect within it apply it.
const PURGE_TTL_SECS: i64 = 60;

/// `proxyctl --etcd ... purge`: a purge every member applies (its watch sees the record).
pub async fn purge_in_etcd(
    endpoints: &[String],
    fleet: &str,
    purge: &crate::cache::Purge,
) -> Result<(), String> {
    purge.validate()?;
    let e = |e: etcd_client::Error| e.to_string();
    let mut client = connect(endpoints).await?;
    let lease = client
        .lease_grant(PURGE_TTL_SECS, None)
        .await
        .map_err(e)?
        .id();
    let key = format!("{}purge/{}-{:x}", prefix(fleet), unix_ms(), lease);
    let value = serde_json::to_vec(purge).map_err(|x| x.to_string())?;
    client
        .put(key, value, Some(PutOptions::new().with_lease(lease)))
        .await
        .map_err(e)?;
    Ok(())
}

pub(crate) async fn connect(endpoints: &[String]) -> Result<Client, String> {
    Client::connect(
        endpoints,
        Some(
            ConnectOptions::new()
                .with_connect_timeout(Duration::from_secs(3))
                .with_timeout(Duration::from_secs(5)),
        ),
    )
    .await
    .map_err(|x| format!("cannot reach etcd at {}: {x}", endpoints.join(",")))
}

/// `proxyctl --etcd`: apply an operator action straight to etcd (every member's watch picks it
/// up). Returns the record written.
pub async fn act_in_etcd(
    endpoints: &[String],
    fleet: &str,
    route: Option<&str>,
    weight: Option<f64>,
    phase: Phase,
    actor: &str,
    reason: &str,
) -> Result<(String, Record), String> {
    let e = |e: etcd_client::Error| e.to_string();
    let mut client = connect(endpoints).await?;
    let rollouts_pre = format!("{}rollouts/", prefix(fleet));
    let all = client
        .get(rollouts_pre.clone(), Some(GetOptions::new().with_prefix()))
        .await
        .map_err(e)?;
    let mut found: Vec<(String, Record, i64)> = all
        .kvs()
        .iter()
        .filter_map(|kv| {
            let route = kv.key_str().ok()?.strip_prefix(&rollouts_pre)?.to_string();
            Some((
                route,
                serde_json::from_slice(kv.value()).ok()?,
                kv.mod_revision(),
            ))
        })
        .collect();
    let (route, current, rev) = match route {
        Some(r) => found
            .drain(..)
            .find(|(name, _, _)| name == r)
            .ok_or_else(|| format!("no rollout {r:?} in fleet {fleet:?}"))?,
        None if found.len() == 1 => found.remove(0),
        None => {
            return Err(format!(
                "{} rollouts in fleet {fleet:?}: name one with --route",
                found.len()
            ));
        }
    };
    let record = Record {
        weight: weight.unwrap_or(match phase {
            Phase::RolledBack => 0.0,
            Phase::Promoted => 100.0,
            _ => current.weight,
        }),
        phase,
        reason: (phase == Phase::RolledBack).then(|| format!("operator {actor}: {reason}")),
        action: "proxyctl".into(),
        actor: actor.to_string(),
        member: "proxyctl".into(),
        at_unix_ms: unix_ms(),
    };
    let key = format!("{rollouts_pre}{route}");
    let txn = Txn::new()
        .when([Compare::mod_revision(key.clone(), CompareOp::Equal, rev)])
        .and_then([TxnOp::put(
            key,
            serde_json::to_vec(&record).map_err(|x| x.to_string())?,
            None,
        )]);
    if !client.txn(txn).await.map_err(e)?.succeeded() {
        return Err(format!("{route}: changed concurrently; try again"));
    }
    Ok((route, record))
}
