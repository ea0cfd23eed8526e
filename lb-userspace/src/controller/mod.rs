//! `xdplb run`: the controller, a reconciler and an applier. Probes and
//! agents feed observations; the planner turns config + observations +
//! drains into each backend's state and weight; the reconciler turns that
//! into the complete target image of the data plane; the applier writes
//! the difference from the live image. Nothing is committed (config,
//! placement, planner memory) before the apply succeeded: a reload whose
//! writes fail is refused and the maps are put back.
//!
//! Layout, one concern per file: `image` (the typed image and its ordered
//! [`diff`](image::diff)), `slots` (VIP indices and backend slots:
//! placement, capacity, retirement; pure), `reconcile` (the target image;
//! pure), `apply` (the writes, and the live image), `sync` (one pass:
//! observe, plan, reconcile, apply, commit), `ops` (the data plane as the
//! controller sees it, [`DataplaneOps`]), `view` (status), `daemon` (the
//! wiring of `xdplb run`), and here the controller's state, its events and
//! its loop.
//!
//! Shape (as mini-redis): [`run`] wires the real pieces (config file, aya
//! data plane, admin socket, metrics, signals) and hands them to
//! [`Controller::run`], which takes its data plane as a [`DataplaneOps`] and
//! its probes from a factory, so tests drive it with fakes.
//!
//! Order of map writes on every apply ([`image::diff`]), so no packet meets
//! an inconsistent state: (1) slots that are not down get their new state,
//! (2) rings are published (each flips atomically, see `dataplane`), (3)
//! slots that are down are marked so, (4) what nothing needs goes. A backend coming up is thus marked before any ring
//! names it; a backend going down leaves the rings before its flows are
//! re-steered (re-steering consults the new ring).
//!
//! Restart: the data plane keeps forwarding with its last state while the
//! controller is away. On start the controller adopts the pinned image
//! (VIP and slot assignments, names kept in the `NAMES` map, reply
//! entries, operator drains as a flag in the backend map) as its live
//! image, and writes nothing until every backend has had its first probe,
//! so a restart changes no ring that the probes would not change anyway
//! (Maglev is deterministic): the first apply is the first reconcile.
use std::{
    collections::{HashMap, HashSet, VecDeque},
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use lb_common::{
    limits::{MAX_BACKENDS, MAX_VIPS},
    BACKEND_DOWN, BACKEND_DRAINING, BACKEND_F_OPERATOR_DRAIN,
};
use thiserror::Error;
// tokio's clock, so tests can run the controller with time paused.
use tokio::{
    sync::{mpsc, watch},
    time::Instant,
};
use tracing::{debug, error, info, warn};

use crate::{
    config::{
        self, AnnounceConfig, BackendConfig, Config, Endpoint, HealthConfig, OnDown, OnEmpty,
        PoolConfig,
    },
    dataplane::{
        self, backend_name_index, AttachMode, BackendSlot, Dataplane, DataplaneError, LinkState,
        Shape,
    },
    health::{self, HealthReport, HealthState, Probe},
    load::{
        client::{agent_timeout, spawn_poller, LoadReport},
        LoadTracker,
    },
    maglev::{self, MaglevEntry},
    metrics::Metrics,
    planner::{
        BackendObservation, BackendPlan, BackendState, Observations, Plan, Planner, PoolPlan,
        Reason,
    },
    status::{BackendStatus, Health, PoolStatus, Status, Transition, TransitionLog},
};

pub use crate::command::{AdminAction, Command};
use crate::state::{AdminState, AdminStates};

mod apply;
mod daemon;
pub mod image;
mod ops;
mod plan;
mod reconcile;
mod slots;
mod sync;
mod view;

use apply::Applier;
pub use daemon::run;
use image::{diff, Change, Image, ReplyImage, RingMember, VipImage};
pub use ops::DataplaneOps;
use reconcile::World;
use slots::Slots;
pub use sync::vip_flags;
pub(crate) use sync::BACKEND_F_HEALTH_DOWN;
use sync::{plan_of, slot_flags, slot_state};

#[derive(Debug, Error)]
pub enum ControllerError {
    #[error(transparent)]
    Dataplane(#[from] DataplaneError),
    #[error(
        "the config needs {needed} new {what} but {free} are free (the data plane holds {max}; \
         {retiring} still retiring until their flows end); nothing was changed — apply it in \
         two steps (remove first, add once the removed ones are freed)"
    )]
    NoCapacity {
        what: &'static str,
        needed: usize,
        free: usize,
        retiring: usize,
        max: u32,
    },
    #[error("pool {pool:?}: no free VIP slot (the data plane holds {max})")]
    NoVipSlot { pool: String, max: u32 },
    #[error(
        "pool {pool:?} backend {backend:?}: no free backend slot (the data plane holds {max})"
    )]
    NoBackendSlot {
        pool: String,
        backend: String,
        max: u32,
    },
}

/// What a pinned slot says of its backend, as the planner's state: a
/// `DRAINING` slot marked health-down is a down backend of an
/// `on_down = "keep"` pool.
fn pinned_state(meta: &BackendSlot) -> Option<BackendState> {
    Some(match meta.state {
        lb_common::BACKEND_ACTIVE => BackendState::Active,
        lb_common::BACKEND_STANDBY => BackendState::Standby,
        BACKEND_DRAINING if meta.flags & BACKEND_F_HEALTH_DOWN != 0 => BackendState::Down,
        BACKEND_DRAINING => BackendState::Draining,
        BACKEND_DOWN => BackendState::Down,
        _ => return None,
    })
}

/// Makes the probe for a pool's health config (tests inject fakes).
pub type ProbeFactory = Arc<dyn Fn(&HealthConfig) -> Arc<dyn Probe> + Send + Sync>;
/// Counts established flows per backend slot (the real one walks the
/// pinned flow table; it runs on a blocking thread).
/// `None` when the count failed: the last good count stands.
pub type FlowCounter = Arc<dyn Fn() -> Option<dataplane::FlowCensus> + Send + Sync>;

/// Half-open flows (handshakes that did not complete) a backend with no
/// established flow must have before status says its answers do not reach
/// the clients: a few, so one lost SYN-ACK is no alarm.
pub const HALF_OPEN_ALARM: u64 = 3;

/// The controller's beat: slow-start ramps, watermark holds, spare drains,
/// agent scores and slot retirement advance on it. A beat plans only when
/// something is pending (see [`Controller::needs_sync`]): a thousand
/// healthy backends cost nothing between their flips. (Public: the
/// failover tests allow detection plus one beat.)
pub const TICK: Duration = Duration::from_millis(200);
/// How often established flows are counted (a walk of the flow table).
pub const FLOW_COUNT_EVERY: Duration = Duration::from_secs(2);
/// The flow count waits at least this many times as long as its last walk
/// took, bounding its CPU share to about 1/10 of a core.
pub const FLOW_COUNT_DUTY: u32 = 10;
/// A flow entry idle longer than this is not counted as established
/// (abandoned connections stay in the flow table until their slot is
/// needed).
pub const FLOW_IDLE: Duration = Duration::from_secs(30);
/// Entries walked at most per count, bounding the walk's cost.
const FLOW_COUNT_LIMIT: usize = 1 << 20;
/// How stale the metrics' backend gauges may get when nothing changes.
const STATUS_EVERY: Duration = Duration::from_secs(1);
/// Weight of a new probe round trip in the smoothed one (as TCP's SRTT,
/// RFC 6298, but heavier: probes are seconds apart, not packets).
const RTT_GAIN: f64 = 0.25;
/// A backend removed by reload keeps its slot (draining) until it has no
/// established flow, or this long.
const RETIRE_AFTER: Duration = Duration::from_secs(300);
/// A pool whose every backend is drained keeps its VIP announced while
/// the drained backends hold established flows, at most this long after
/// its ring emptied (long enough for request/response traffic and most
/// downloads; a gateway then stops drawing traffic it can only refuse).
pub const DRAIN_ANNOUNCE_HOLD: Duration = Duration::from_secs(300);
/// How often the host's addresses, MACs and redirect targets are written
/// again (one netlink dump). An address added meanwhile is unknown to the
/// program for at most this long: probes from it would have their replies
/// rewritten as client traffic until then.
pub const HOST_SYNC_EVERY: Duration = Duration::from_secs(3);

type Key = (String, String);

/// What an agent's answer says of the administrative state it wants kept.
enum AgentSaid {
    /// Neither `drain`/`maint` nor `up`/`ready`: what is kept stays.
    Nothing,
    /// `up` or `ready` (without `drain`/`maint`): the agent's kept state ends.
    Ready,
    Admin(AdminState),
}

fn agent_admin(reply: &crate::load::AgentReply) -> AgentSaid {
    use crate::load::AgentState;
    match (reply.admin, reply.oper) {
        (Some(AgentState::Maint), _) => AgentSaid::Admin(AdminState::Maint),
        (Some(AgentState::Drain), _) => AgentSaid::Admin(AdminState::Drain),
        (Some(AgentState::Ready), _) | (None, Some(AgentState::Up)) => AgentSaid::Ready,
        _ => AgentSaid::Nothing,
    }
}

/// Every backend of `config` and its address.
fn wanted_backends(config: &Config) -> HashMap<Key, SocketAddr> {
    config
        .pools
        .iter()
        .flat_map(|p| {
            p.backends
                .iter()
                .map(move |b| (key(&p.name, &b.name), b.addr))
        })
        .collect()
}

fn key(pool: &str, backend: &str) -> Key {
    (pool.to_string(), backend.to_string())
}

struct Task {
    id: u64,
    /// What the task was started with; a change restarts it.
    fingerprint: String,
    stop: watch::Sender<bool>,
}

impl Drop for Task {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

#[derive(Default)]
struct Runtime {
    /// The server this runtime is about: a backend re-addressed under the
    /// same name is another one, and starts afresh.
    addr: Option<SocketAddr>,
    health: Option<HealthState>,
    /// A probe has reported since this controller started (a health state
    /// seeded from the maps is not a probe).
    probed: bool,
    /// Smoothed round trip of successful probes (the seed's response time).
    rtt: Option<Duration>,
    /// Whether the agent answered its last query (`None`: not asked yet).
    agent_up: Option<bool>,
    agent_error: Option<String>,
    last_error: Option<String>,
    load: Option<LoadTracker>,
    agent_line: Option<String>,
    /// This backend's pool's health-check histograms (`[failure,
    /// success]`), taken from the metrics at its first report.
    checks: Option<[prometheus_client::metrics::histogram::Histogram; 2]>,
    /// Its last state changes, as status shows them.
    transitions: TransitionLog,
}

/// The controller proper. Owns the data plane writer and all state.
pub struct Controller<D: DataplaneOps> {
    config_path: PathBuf,
    /// Where the text of the config last applied is kept (`xdplb run
    /// --keep-applied`), for xdplb-fallback.service and xdplb-hold.service.
    keep_applied: Option<PathBuf>,
    config: Config,
    /// The data plane, what it holds, and the announcer.
    out: Applier<D>,
    slots: Slots,
    planner: Planner,
    runtime: HashMap<Key, Runtime>,
    /// Runtime states (operator drain, maintenance, weight override; the
    /// agent's kept drain or maintenance), as `state_file` keeps them.
    admin: AdminStates,
    /// Established flows per slot, from the last count; `None` until the
    /// first count is in. "Not counted yet" is not zero: no retiring slot is
    /// freed before a count says it is idle.
    flows: Option<HashMap<u32, u64>>,
    /// Half-open flows per slot, from the last count.
    half_open: HashMap<u32, u64>,
    /// When the last count began: a slot retired after that is not known
    /// to be idle by it.
    flows_at: Instant,
    checkers: HashMap<Key, Task>,
    pollers: HashMap<Key, Task>,
    task_owner: HashMap<u64, Key>,
    next_task_id: u64,
    health_tx: mpsc::Sender<HealthReport>,
    load_tx: mpsc::Sender<LoadReport>,
    probes: ProbeFactory,
    metrics: Option<Arc<Metrics>>,
    plan: Option<Plan>,
    /// An observation the plan depends on changed since the last sync (a
    /// health flip, an agent reply, a flow count, a drain, a reload), or
    /// the last sync failed and must be retried.
    dirty: bool,
    /// When the metrics last got the status.
    status_pushed: Instant,
    epoch: Instant,
    /// Nothing is written before every backend has a first probe result
    /// (or this deadline passes).
    ready_deadline: Instant,
    ready: bool,
    /// The last sync found the program detached (warned once per loss).
    /// The configured interfaces the program is not attached to, as last
    /// checked (status shows them; nothing is announced meanwhile).
    detached: std::collections::BTreeSet<String>,
    /// Each backend's state in the pins at start: where the planner and
    /// the state changes status shows start from.
    pinned: HashMap<Key, BackendState>,
    /// Since when each pool's ring has been empty.
    emptied: HashMap<String, Instant>,
    /// The state file could not be read nor moved aside: it is not
    /// overwritten.
    state_stuck: bool,
}

/// Channels the controller's tasks report on.
pub struct Inputs {
    health_rx: mpsc::Receiver<HealthReport>,
    load_rx: mpsc::Receiver<LoadReport>,
}

impl<D: DataplaneOps> Controller<D> {
    /// A controller for `config`, adopting what `dp` already holds.
    pub fn new(
        config_path: PathBuf,
        config: Config,
        dp: D,
        probes: ProbeFactory,
        metrics: Option<Arc<Metrics>>,
    ) -> Result<(Controller<D>, Inputs), ControllerError> {
        let (health_tx, health_rx) = mpsc::channel(1024);
        let (load_tx, load_rx) = mpsc::channel(1024);
        let out = Applier::adopt(dp, config.dataplane.ring_size)?;
        let now = Instant::now();
        let slots = Slots::adopt(&out.live, now);
        for (pool, index) in &slots.vips {
            let vip = out.live.vips[index].endpoint;
            info!(pool, %vip, index, "adopted VIP from the pinned data plane");
        }
        let mut admin = AdminStates::new();
        for (k, slot) in &slots.backends {
            if out.live.slots[slot].flags & BACKEND_F_OPERATOR_DRAIN != 0 {
                info!(
                    pool = k.0,
                    backend = k.1,
                    "operator drain survives the restart"
                );
                admin.entry(k.clone()).or_default().drain = true;
            }
        }
        let pinned = slots
            .backends
            .iter()
            .filter_map(|(k, slot)| Some((k.clone(), pinned_state(out.live.slots.get(slot)?)?)))
            .collect();
        // The first sync waits for the first probes and agent answers, at
        // most as long as the slowest may take (and a margin for the
        // scheduling of a thousand tasks).
        let max_timeout = config
            .pools
            .iter()
            .map(|p| {
                let agent = p
                    .load
                    .as_ref()
                    .map_or(Duration::ZERO, |l| agent_timeout(l.interval_ms));
                Duration::from_millis(p.health.timeout_ms).max(agent)
            })
            .max()
            .unwrap_or_default();
        let mut c = Controller {
            config_path,
            keep_applied: None,
            config: Config {
                pools: Vec::new(),
                ..config.clone()
            },
            out,
            slots,
            planner: Planner::new(),
            runtime: HashMap::new(),
            admin,
            flows: None,
            half_open: HashMap::new(),
            flows_at: now,
            checkers: HashMap::new(),
            pollers: HashMap::new(),
            task_owner: HashMap::new(),
            next_task_id: 1,
            health_tx,
            load_tx,
            probes,
            metrics,
            plan: None,
            dirty: true,
            status_pushed: now,
            epoch: now,
            ready_deadline: now + max_timeout + Duration::from_millis(500),
            ready: false,
            detached: Default::default(),
            pinned,
            emptied: HashMap::new(),
            state_stuck: false,
        };
        // Runtime states kept in the state file survive `xdplb down` and
        // reboots, which the maps' flags do not (and the maps hold no
        // maintenance nor weight override).
        if let Some(path) = &c.config.control.state_file {
            match crate::state::load(path) {
                Ok(saved) => {
                    for ((pool, backend), saved) in saved {
                        let (state, by) = saved.state();
                        info!(
                            pool,
                            backend,
                            admin_state = %state,
                            set_by = by.map_or("", |b| b.as_str()),
                            weight = ?saved.weight,
                            "runtime state restored from the state file"
                        );
                        let a = c.admin.entry(key(&pool, &backend)).or_default();
                        let drain = a.drain;
                        *a = saved;
                        a.drain |= drain;
                    }
                }
                Err(e) => {
                    error!(error = %e, "runtime states (drains, maintenance, weights) not restored");
                    c.state_stuck = matches!(e, crate::state::StateError::Stuck { .. });
                }
            }
        }
        // Placed and committed at once: until the first probes are in,
        // only what the config dropped is written (see `reconcile`).
        let (slots, _) = c.slots.place(&c.out.live, &c.config, &config, now)?;
        c.commit(config, slots);
        // What the config dropped goes now; the rest waits for the probes.
        c.converge(None)?;
        if let Err(e) = c.persist_admin() {
            warn!(error = e, "runtime states not saved");
        }
        Ok((c, Inputs { health_rx, load_rx }))
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn task_id(&mut self, k: &Key) -> u64 {
        let id = self.next_task_id;
        self.next_task_id += 1;
        self.task_owner.insert(id, k.clone());
        id
    }

    /// The backend a report is about, if its task is still the current one.
    fn owner(&self, id: u64, tasks: &HashMap<Key, Task>) -> Option<Key> {
        let k = self.task_owner.get(&id)?;
        (tasks.get(k)?.id == id).then(|| k.clone())
    }

    /// A probe result. Returns true when the backend's health flipped.
    pub fn on_health(&mut self, r: HealthReport) -> bool {
        // Borrowed field by field, not through `owner`: a report (a
        // thousand a second) then copies no name.
        let Some(k) = self.task_owner.get(&r.id) else {
            return false;
        };
        if self.checkers.get(k).is_none_or(|t| t.id != r.id) {
            return false;
        }
        let Some(rt) = self.runtime.get_mut(k) else {
            return false;
        };
        if let Some(m) = &self.metrics {
            rt.checks.get_or_insert_with(|| m.health_checks(&k.0))[usize::from(r.success)]
                .observe(r.duration.as_secs_f64());
        }
        rt.last_error = if r.success { None } else { r.error };
        rt.probed = true;
        if r.success {
            rt.rtt = Some(match rt.rtt {
                None => r.duration,
                Some(prev) => prev.mul_f64(1.0 - RTT_GAIN) + r.duration.mul_f64(RTT_GAIN),
            });
        }
        let flipped = rt.health.as_mut().and_then(|h| h.observe(r.success));
        self.dirty |= flipped.is_some();
        match flipped {
            Some(true) => info!(pool = k.0, backend = k.1, "backend is up"),
            Some(false) => warn!(
                pool = k.0,
                backend = k.1,
                error = rt.last_error.as_deref().unwrap_or(""),
                "backend is down"
            ),
            None => {}
        }
        flipped.is_some()
    }

    pub fn on_load(&mut self, r: LoadReport) {
        let Some(k) = self.owner(r.id, &self.pollers) else {
            return;
        };
        let now = self.now_ms();
        let Some(rt) = self.runtime.get_mut(&k) else {
            return;
        };
        let Some(tracker) = rt.load.as_mut() else {
            return;
        };
        self.dirty = true;
        match r.result {
            Ok(reply) => {
                match rt.agent_up {
                    Some(true) => {}
                    Some(false) => warn!(pool = k.0, backend = k.1, "load agent answers again"),
                    None => info!(pool = k.0, backend = k.1, "load agent answers"),
                }
                rt.agent_up = Some(true);
                rt.agent_error = None;
                rt.agent_line = Some(reply.to_line());
                let kept = agent_admin(&reply);
                tracker.on_reply(now, reply);
                self.keep_agent_state(&k, kept);
            }
            Err(e) => {
                if rt.agent_up != Some(false) {
                    // Its last score holds for 3 intervals, then 0.5.
                    warn!(pool = k.0, backend = k.1, error = %e, "load agent stopped answering");
                } else {
                    debug!(pool = k.0, backend = k.1, error = %e, "agent query failed");
                }
                rt.agent_up = Some(false);
                rt.agent_error = Some(e.to_string());
                rt.agent_line = None;
                tracker.on_failure(now);
            }
        }
    }

    /// A flow count that began now.
    pub fn set_flows(&mut self, flows: HashMap<u32, u64>) {
        self.set_flows_since(Instant::now(), flows);
    }

    /// A flow count that began at `started`.
    pub fn set_flows_since(&mut self, started: Instant, flows: HashMap<u32, u64>) {
        // The same counts again change no plan (retiring slots, which
        // also look at when the count began, keep the beat going anyway).
        self.dirty |= self.flows.as_ref() != Some(&flows);
        self.flows = Some(flows);
        self.flows_at = started;
    }

    /// Established flows of a slot as last counted (0 before any count).
    fn flows_of(&self, slot: u32) -> u64 {
        self.flows
            .as_ref()
            .and_then(|f| f.get(&slot))
            .copied()
            .unwrap_or(0)
    }

    /// Keeps what an agent's answer says of its administrative state
    /// (HAProxy's agent-check: `drain`/`maint` stay in force until the
    /// agent says `up` or `ready`; an answer with neither word, or no
    /// answer, changes nothing). Saved to the state file when it changed.
    fn keep_agent_state(&mut self, k: &Key, said: AgentSaid) {
        let kept = match said {
            AgentSaid::Nothing => return,
            AgentSaid::Ready => None,
            AgentSaid::Admin(s) => Some(s),
        };
        let current = self.admin.get(k).and_then(|a| a.agent_state);
        if current == kept {
            return;
        }
        info!(
            pool = k.0,
            backend = k.1,
            from = current.unwrap_or_default().as_str(),
            to = kept.unwrap_or_default().as_str(),
            "agent changed the administrative state"
        );
        self.admin.entry(k.clone()).or_default().agent_state = kept;
        self.admin.retain(|_, a| !a.is_default());
        self.dirty = true;
        // A maintenance the agent asked for stops the health checks; its
        // end starts them again.
        self.restart_checker(k);
        if let Err(e) = self.persist_admin() {
            warn!(error = e, "runtime states not saved");
        }
    }

    /// Whether a backend is in maintenance (its health checks stopped).
    fn in_maint(&self, k: &Key) -> bool {
        self.admin
            .get(k)
            .is_some_and(|a| a.state().0 == AdminState::Maint)
    }

    /// Starts or stops a backend's health checker as its runtime state
    /// now says.
    fn restart_checker(&mut self, k: &Key) {
        let Some(pool) = self.config.pool(&k.0).cloned() else {
            return;
        };
        if let Some(b) = pool.backend(&k.1).cloned() {
            self.run_checker(&pool, &b);
        }
    }

    /// Writes the runtime states of backends in the config to the state
    /// file (if there is one).
    fn persist_admin(&mut self) -> Result<(), String> {
        let config = &self.config;
        self.admin.retain(|(p, b), a| {
            !a.is_default() && config.pool(p).is_some_and(|pool| pool.backend(b).is_some())
        });
        let Some(path) = &self.config.control.state_file else {
            return Ok(());
        };
        if self.state_stuck {
            return Err(format!(
                "{} could not be read nor moved aside at start; not overwritten",
                path.display()
            ));
        }
        // Nothing to keep and nothing kept: no file (a host that never
        // drains gets no /var/lib/xdplb).
        if self.admin.is_empty() && !path.exists() {
            return Ok(());
        }
        crate::state::save(path, &self.admin).map_err(|e| e.to_string())
    }

    /// Makes `config`, placed by `slots`, the running config: the runtime
    /// and tasks of backends that left (or were re-addressed) go, every
    /// backend's probe and agent poller run as its config says.
    fn commit(&mut self, config: Config, slots: Slots) {
        self.config = config;
        self.slots = slots;
        self.dirty = true;
        let wanted = wanted_backends(&self.config);
        let stale: Vec<Key> = self
            .runtime
            .iter()
            .filter(|(k, rt)| wanted.get(*k) != rt.addr.as_ref())
            .map(|(k, _)| k.clone())
            .collect();
        for k in stale {
            self.runtime.remove(&k);
            self.checkers.remove(&k);
            self.pollers.remove(&k);
        }
        self.checkers.retain(|k, _| wanted.contains_key(k));
        self.pollers.retain(|k, _| wanted.contains_key(k));
        let pools = self.config.pools.clone();
        for pool in &pools {
            for b in &pool.backends {
                self.start_backend(pool, b);
            }
        }
    }

    /// Starts a backend's health checker (again, when its probe rules
    /// changed), or stops it while the backend is in maintenance.
    fn run_checker(&mut self, pool: &PoolConfig, b: &BackendConfig) {
        let k = key(&pool.name, &b.name);
        let health_fp = format!("{} {:?}", b.addr, pool.health);
        if self.in_maint(&k) {
            // Maintenance: no health checks (HAProxy's MAINT); the last
            // verdict stands until checks resume.
            if self.checkers.remove(&k).is_some() {
                info!(
                    pool = k.0,
                    backend = k.1,
                    "in maintenance: health checks stopped"
                );
            }
        } else if self.checkers.get(&k).map(|t| &t.fingerprint) != Some(&health_fp) {
            let id = self.task_id(&k);
            let (stop, stop_rx) = watch::channel(false);
            let probe = (self.probes)(&pool.health);
            health::spawn_checker(
                id,
                pool.health.target(b.addr),
                pool.health.clone(),
                probe,
                self.health_tx.clone(),
                stop_rx,
            );
            self.checkers.insert(
                k.clone(),
                Task {
                    id,
                    fingerprint: health_fp,
                    stop,
                },
            );
        }
    }

    /// A backend's runtime and tasks, as its pool's config says: a new one
    /// found in the adopted pins (before the first plan is written: same
    /// slot, same address) starts from its last verdict, kept until probes
    /// overturn it; new probe rules restart its checker but keep its
    /// verdict.
    fn start_backend(&mut self, pool: &PoolConfig, b: &BackendConfig) {
        let k = key(&pool.name, &b.name);
        let pinned_up = self
            .slots
            .backends
            .get(&k)
            .filter(|_| !self.ready)
            .and_then(|slot| self.out.live.slots.get(slot))
            .filter(|m| m.addr == b.addr)
            .map(|m| m.state != BACKEND_DOWN && m.flags & BACKEND_F_HEALTH_DOWN == 0);
        let rt = self.runtime.entry(k.clone()).or_default();
        rt.addr = Some(b.addr);
        match (&mut rt.health, pinned_up) {
            (Some(h), _) => h.reconfigure(pool.health.rise, pool.health.fall),
            (None, Some(up)) => {
                rt.health = Some(HealthState::seeded(pool.health.rise, pool.health.fall, up))
            }
            (None, None) => rt.health = Some(HealthState::new(pool.health.rise, pool.health.fall)),
        }
        match (&pool.load, &mut rt.load) {
            (Some(l), Some(t)) => t.set_factors(l.factors),
            (Some(l), None) => rt.load = Some(LoadTracker::new(l.factors)),
            (None, _) => {
                rt.load = None;
                rt.agent_line = None;
                rt.agent_up = None;
                rt.agent_error = None;
            }
        }
        self.run_checker(pool, b);
        match &pool.load {
            Some(l) => {
                let agent = SocketAddr::new(b.addr.ip(), l.agent_port);
                let fp = format!("{agent} {}", l.interval_ms);
                if self.pollers.get(&k).map(|t| &t.fingerprint) != Some(&fp) {
                    let id = self.task_id(&k);
                    let (stop, stop_rx) = watch::channel(false);
                    spawn_poller(
                        id,
                        agent,
                        Duration::from_millis(l.interval_ms),
                        agent_timeout(l.interval_ms),
                        self.load_tx.clone(),
                        stop_rx,
                    );
                    self.pollers.insert(
                        k,
                        Task {
                            id,
                            fingerprint: fp,
                            stop,
                        },
                    );
                }
            }
            None => {
                self.pollers.remove(&k);
            }
        }
    }

    /// `xdplb drain` (`true`) or `xdplb undrain` (`false`).
    pub fn drain(&mut self, pool: &str, backend: &str, drain: bool) -> Result<(), String> {
        let action = if drain {
            AdminAction::Drain
        } else {
            AdminAction::Undrain
        };
        self.set_admin(pool, backend, action)
    }

    /// Sets a runtime state: applied to the maps at once, then kept in the
    /// state file. Not applied: not kept either.
    pub fn set_admin(
        &mut self,
        pool: &str,
        backend: &str,
        action: AdminAction,
    ) -> Result<(), String> {
        let p = self
            .config
            .pool(pool)
            .ok_or_else(|| format!("unknown pool {pool:?}"))?;
        if p.backend(backend).is_none() {
            return Err(format!("unknown backend {backend:?} in pool {pool:?}"));
        }
        if let AdminAction::Weight(Some(w)) = action {
            if w > config::MAX_WEIGHT {
                return Err(format!(
                    "{pool}/{backend}: weight {w} is out of range 0..={} (0: no new flows)",
                    config::MAX_WEIGHT
                ));
            }
        }
        let k = key(pool, backend);
        let before = self.admin.get(&k).cloned().unwrap_or_default();
        let mut after = before.clone();
        match action {
            AdminAction::Drain => after.drain = true,
            AdminAction::Undrain => after.drain = false,
            AdminAction::Maint => after.maint = true,
            AdminAction::Ready => {
                after.drain = false;
                after.maint = false;
                after.agent_state = None;
            }
            AdminAction::Weight(w) => after.weight = w,
        }
        info!(pool, backend, ?action, "runtime state");
        let put = |c: &mut Self, a: &crate::state::BackendAdmin| {
            if a.is_default() {
                c.admin.remove(&k);
            } else {
                c.admin.insert(k.clone(), a.clone());
            }
            c.restart_checker(&k);
        };
        put(self, &after);
        if let Err(e) = self.sync() {
            // Not applied: not kept either (the next beats put the maps
            // back as they were).
            put(self, &before);
            return Err(format!("{pool}/{backend}: not applied: {e}"));
        }
        self.persist_admin().map_err(|e| {
            format!(
                "{pool}/{backend}: applied, but it will not survive `xdplb down` or a reboot: {e}"
            )
        })
    }

    /// `text` (the config file at `path`) as a config a reload may apply:
    /// valid, its interfaces there, `[dataplane]` and `[control]` as
    /// running. The refusal is what `xdplb reload` (and `xdplb plan`) say.
    pub(super) fn reloadable(&self, path: &Path, text: &str) -> Result<Config, String> {
        let new = config::parse(path, text).map_err(|e| e.to_string())?;
        config::check_interfaces_exist(&new).map_err(|e| e.placed(path).to_string())?;
        if new.dataplane != self.config.dataplane {
            return Err(format!(
                "{}: [dataplane] changed; it shapes the pinned maps and attachments, so it \
                 needs `xdplb down` and a fresh `xdplb run` (this drops established flows)",
                path.display()
            ));
        }
        let secret = |c: &Config| c.sync.as_ref().map(|s| s.secret.clone());
        if new.sync.is_some() && secret(&new) != secret(&self.config) {
            return Err(format!(
                "{}: [sync] added or its secret changed; the secret keys the flow table, which \
                 a running data plane cannot change without losing its pinned flows, so it needs \
                 `xdplb down` and a fresh `xdplb run` (this drops established flows once)",
                path.display()
            ));
        }
        if new.sync != self.config.sync {
            return Err(format!(
                "{}: [sync] changed (removed, or its listen or peers); restart `xdplb run` to \
                 rebind its socket (the data plane keeps forwarding meanwhile)",
                path.display()
            ));
        }
        if new.control != self.config.control {
            return Err(format!(
                "{}: [control] changed; restart `xdplb run` to rebind the admin socket or \
                 metrics listener (the data plane keeps forwarding meanwhile)",
                path.display()
            ));
        }
        Ok(new)
    }

    /// Re-reads the config file and applies it, or refuses it with the
    /// reason and changes nothing.
    pub fn reload(&mut self) -> Result<String, String> {
        let text = std::fs::read_to_string(&self.config_path)
            .map_err(|e| format!("{}: {e}", self.config_path.display()))?;
        let new = self.reloadable(&self.config_path, &text)?;
        let (slots, summary) = self
            .slots
            .place(&self.out.live, &self.config, &new, Instant::now())
            .map_err(|e| e.to_string())?;
        if let Err(e) = self.converge(Some((&new, &slots))) {
            // The maps may hold part of the new config: back to the
            // running one's image (retried on the next beats if this
            // fails too).
            let restored = match self.sync() {
                Ok(()) => String::new(),
                Err(e) => format!(" (restoring its maps failed too, retrying: {e})"),
            };
            return Err(format!(
                "{}: applying it failed: {e}; the running config is unchanged{restored}",
                self.config_path.display()
            ));
        }
        self.commit(new, slots);
        if let Err(e) = self.persist_admin() {
            warn!(error = e, "runtime states not saved");
        }
        let summary = if summary.is_empty() {
            "no change".to_string()
        } else {
            summary.join("; ")
        };
        info!(summary, "config reloaded");
        self.save_applied(&text);
        Ok(summary)
    }

    /// Connects the flow sync task (`[sync]`): it hears of every ring
    /// published from now on, and status shows its peers and counts.
    pub fn with_flow_sync(&mut self, handle: crate::flowsync::task::Handle) {
        self.out.flow_sync = Some(handle);
    }

    /// Keeps `text` (the config just applied) at `--keep-applied`. A
    /// failure is logged: the running controller is not affected, only a
    /// later fallback would start from an older copy.
    pub(super) fn save_applied(&self, text: &str) {
        if let Some(path) = &self.keep_applied {
            if let Err(e) = crate::fsutil::write_atomic(path, text.as_bytes(), 0o600, None) {
                error!("the applied config is not kept for a fallback: {e}");
            }
        }
    }

    pub fn on_command(&mut self, cmd: Command) {
        match cmd {
            Command::Status { reply } => {
                let _ = reply.send(self.status());
            }
            Command::Admin {
                pool,
                backend,
                action,
                reply,
            } => {
                let _ = reply.send(self.set_admin(&pool, &backend, action));
            }
            Command::Plan { proposal, reply } => {
                let _ = reply.send(self.plan_change(&proposal));
            }
            Command::Reload { reply } => {
                let r = self.reload();
                if let Err(e) = &r {
                    error!("reload refused; running config unchanged: {e}");
                }
                let _ = reply.send(r);
            }
        }
    }

    /// Rewrites the host's addresses, MACs and redirect targets into the
    /// data plane. A failure is logged and retried on the next beat; the
    /// program keeps the last good values.
    pub fn sync_host(&mut self) {
        if let Err(e) = self.out.dp.sync_host(&self.config.dataplane.interfaces) {
            error!(error = %e, "writing host addresses into the data plane failed");
        }
        if let Err(e) = self
            .out
            .dp
            .sync_extra_macs(&self.config.dataplane.extra_macs)
        {
            error!(error = %e, "writing extra_macs into the data plane failed");
        }
    }

    /// Checks each configured interface's link: a defunct one (its
    /// interface deleted) is attached again as soon as the interface is
    /// back; the ones still detached are noted (a change makes the next
    /// beat sync: announcements follow).
    pub fn check_links(&mut self) {
        let ifaces = self.config.dataplane.interfaces.clone();
        let mode = daemon::attach_mode(self.config.dataplane.xdp_mode);
        for (iface, state) in self.out.dp.links(&ifaces) {
            if state != LinkState::Defunct {
                continue;
            }
            match self.out.dp.reattach(&iface, mode) {
                Ok(true) => info!(iface, "interface is back: XDP program attached again"),
                Ok(false) => {}
                Err(e) => error!(iface, error = %e, "attaching again failed; retrying"),
            }
        }
        let detached: std::collections::BTreeSet<String> = self
            .out
            .dp
            .links(&ifaces)
            .into_iter()
            .filter(|(_, s)| *s != LinkState::Attached)
            .map(|(i, _)| i)
            .collect();
        if detached != self.detached {
            for iface in detached.difference(&self.detached) {
                warn!(
                    iface,
                    "the data plane is detached from this interface: VIPs withdrawn"
                );
            }
            self.detached = detached;
            self.dirty = true;
        }
    }

    /// A link event: a configured interface deleted or created again
    /// (or events lost: everything is checked).
    fn on_link_event(&mut self, event: std::io::Result<crate::netlink::LinkEvent>) {
        use crate::netlink::LinkEvent;
        match &event {
            Ok(LinkEvent::New { name, .. } | LinkEvent::Deleted { name, .. })
                if !self.config.dataplane.interfaces.contains(name) =>
            {
                return
            }
            Ok(e) => debug!(event = ?e, "link event"),
            Err(e) => warn!(error = %e, "link events lost; checking every interface"),
        }
        self.check_links();
        // A re-created interface has a new index and maybe a new MAC.
        self.sync_host();
    }

    /// Runs until `shutdown` resolves. SIGHUP-style reloads arrive as
    /// `reload` signals; admin requests as `commands`.
    pub async fn run(
        mut self,
        mut inputs: Inputs,
        mut commands: mpsc::Receiver<Command>,
        mut reload: mpsc::Receiver<()>,
        flow_counter: Option<FlowCounter>,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> Result<(), ControllerError> {
        tokio::pin!(shutdown);
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The first host sync is the caller's (before the first map sync);
        // this one keeps it current.
        let mut host_tick =
            tokio::time::interval_at(Instant::now() + HOST_SYNC_EVERY, HOST_SYNC_EVERY);
        host_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let (flows_tx, mut flows_rx) = mpsc::channel(1);
        if let Some(counter) = flow_counter {
            tokio::spawn(async move {
                loop {
                    let c = counter.clone();
                    let started = Instant::now();
                    let Ok(flows) = tokio::task::spawn_blocking(move || c()).await else {
                        break;
                    };
                    let took = started.elapsed();
                    if let Some(flows) = flows {
                        if flows_tx.send((started, flows)).await.is_err() {
                            break;
                        }
                    }
                    // A walk of a big flow table costs real CPU (two
                    // syscalls an entry): keep it under a tenth of a core.
                    tokio::time::sleep(FLOW_COUNT_EVERY.max(took * FLOW_COUNT_DUTY)).await;
                }
            });
        }
        let mut systemd = crate::notify::Systemd::from_env();
        // Interfaces deleted and created again get the program back at
        // once; without events (no netlink), the host beat still checks.
        let mut links = match crate::netlink::LinkEvents::subscribe() {
            Ok(l) => Some(l),
            Err(e) => {
                warn!(error = %e, "no link events; interfaces re-created are noticed within {HOST_SYNC_EVERY:?}");
                None
            }
        };
        loop {
            let sync_now = tokio::select! {
                _ = &mut shutdown => break,
                Some(r) = inputs.health_rx.recv() => self.on_health(r),
                Some(r) = inputs.load_rx.recv() => { self.on_load(r); false }
                Some(cmd) = commands.recv() => { self.on_command(cmd); false }
                Some(()) = reload.recv() => {
                    match self.reload() {
                        Ok(s) => info!(summary = s, "reload (signal) applied"),
                        Err(e) => error!("reload (signal) refused; running config unchanged: {e}"),
                    }
                    false
                }
                Some((at, census)) = flows_rx.recv() => {
                    self.half_open = census.half_open;
                    self.set_flows_since(at, census.established);
                    false
                }
                e = next_link_event(&mut links) => {
                    // A broken subscription (events lost: ENOBUFS) is
                    // dropped and made afresh on the next host beat, so a
                    // failing socket cannot spin the loop.
                    if e.is_err() {
                        links = None;
                    }
                    self.on_link_event(e);
                    false
                }
                _ = host_tick.tick() => {
                    if links.is_none() {
                        links = crate::netlink::LinkEvents::subscribe().ok();
                    }
                    self.check_links();
                    self.sync_host();
                    false
                }
                _ = tick.tick() => true,
            };
            if sync_now {
                let synced = self.beat();
                if let Err(e) = &synced {
                    // A failed map write is retried on the next beat; the
                    // data plane keeps its last good state meanwhile.
                    error!(error = %e, "data plane sync failed");
                }
                // READY=1 after the first sync that wrote the maps.
                systemd.beat(self.ready && synced.is_ok());
            }
        }
        systemd.stopping();
        info!("controller stopping; the data plane stays pinned and forwarding");
        Ok(())
    }
}

/// The next link event, or never without a subscription.
async fn next_link_event(
    links: &mut Option<crate::netlink::LinkEvents>,
) -> std::io::Result<crate::netlink::LinkEvent> {
    match links {
        Some(l) => l.next().await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests;
