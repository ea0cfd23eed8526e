//! `xdplb run`: the controller. Probes and agents feed observations; the
//! planner turns config + observations + drains into each backend's state
//! and weight; this module writes the difference into the data plane.
//!
//! Shape (as mini-redis): [`run`] wires the real pieces (config file, aya
//! data plane, admin socket, metrics, signals) and hands them to
//! [`Controller::run`], which takes its data plane as a [`DataplaneOps`] and
//! its probes from a factory, so tests drive it with fakes.
//!
//! Order of map writes on every sync, so no packet meets an inconsistent
//! state: (1) slots that are not down get their new state, (2) rings are
//! published (each flips atomically, see `dataplane`), (3) slots that are
//! down are marked so. A backend coming up is thus marked before any ring
//! names it; a backend going down leaves the rings before its flows are
//! re-steered (re-steering consults the new ring).
//!
//! Restart: the data plane keeps forwarding with its last state while the
//! controller is away. On start the controller adopts the pinned VIP and
//! slot assignments (names are kept in the `NAMES` map) and operator
//! drains (a flag in the backend map), and writes nothing until every
//! backend has had its first probe, so a restart changes no ring that
//! the probes would not change anyway (Maglev is deterministic).
use std::{
    collections::{HashMap, HashSet, VecDeque},
    net::SocketAddrV4,
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
    config::{self, BackendConfig, Config, HealthConfig, OnDown, OnEmpty, PoolConfig, Role},
    dataplane::{
        self, backend_name_index, AttachMode, BackendSlot, Dataplane, DataplaneError, Shape,
    },
    health::{self, HealthReport, HealthState, Probe},
    load::{
        client::{agent_timeout, spawn_poller, LoadReport},
        LoadTracker,
    },
    maglev::{self, MaglevEntry},
    metrics::Metrics,
    planner::{BackendObservation, BackendState, Observations, Plan, Planner},
    status::{BackendStatus, PoolStatus, Status},
};

pub use crate::command::Command;

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

/// The controller's view of the data plane: what it writes and reads back.
/// [`Dataplane`] is the real one; tests use a fake.
pub trait DataplaneOps: Send {
    /// `flags`: `lb_common::VIP_F_*` bits (see [`vip_flags`]).
    fn publish_vip(
        &mut self,
        vip: SocketAddrV4,
        vip_index: u32,
        ring: &[u32],
        flags: u32,
    ) -> Result<(), DataplaneError>;
    /// Writes what the program must know about this host: the attached
    /// interfaces' MACs and redirect targets, and this network namespace's
    /// local addresses (so replies to the controller's own probes are told
    /// apart from client traffic). Addresses change: called again every
    /// [`HOST_SYNC_EVERY`].
    fn sync_host(&mut self, interfaces: &[String]) -> Result<(), DataplaneError>;
    fn remove_vip(&mut self, vip: SocketAddrV4) -> Result<(), DataplaneError>;
    fn write_backend(&mut self, slot: &BackendSlot) -> Result<(), DataplaneError>;
    fn free_backend(&mut self, slot: u32) -> Result<(), DataplaneError>;
    fn write_reply(
        &mut self,
        backend: SocketAddrV4,
        vip: SocketAddrV4,
        slot: u32,
        vip_index: u32,
    ) -> Result<(), DataplaneError>;
    fn remove_reply(&mut self, backend: SocketAddrV4) -> Result<(), DataplaneError>;
    fn write_name(&mut self, index: u32, name: &str) -> Result<(), DataplaneError>;
    /// (pool name, vip, vip index) of every VIP in the map.
    fn adopt_vips(&self) -> Result<Vec<(String, SocketAddrV4, u32)>, DataplaneError>;
    /// (backend name, slot) of every slot in use.
    fn adopt_backends(&self) -> Result<Vec<(String, BackendSlot)>, DataplaneError>;
}

impl DataplaneOps for Dataplane {
    fn publish_vip(
        &mut self,
        vip: SocketAddrV4,
        idx: u32,
        ring: &[u32],
        flags: u32,
    ) -> Result<(), DataplaneError> {
        Dataplane::publish_vip(self, vip, idx, ring, flags)
    }
    fn sync_host(&mut self, interfaces: &[String]) -> Result<(), DataplaneError> {
        Dataplane::sync_host(self, interfaces)
    }
    fn remove_vip(&mut self, vip: SocketAddrV4) -> Result<(), DataplaneError> {
        Dataplane::remove_vip(self, vip)
    }
    fn write_backend(&mut self, slot: &BackendSlot) -> Result<(), DataplaneError> {
        Dataplane::write_backend(self, slot)
    }
    fn free_backend(&mut self, slot: u32) -> Result<(), DataplaneError> {
        Dataplane::free_backend(self, slot)
    }
    fn write_reply(
        &mut self,
        backend: SocketAddrV4,
        vip: SocketAddrV4,
        slot: u32,
        vip_index: u32,
    ) -> Result<(), DataplaneError> {
        Dataplane::write_reply(self, backend, vip, slot, vip_index)
    }
    fn remove_reply(&mut self, backend: SocketAddrV4) -> Result<(), DataplaneError> {
        Dataplane::remove_reply(self, backend)
    }
    fn write_name(&mut self, index: u32, name: &str) -> Result<(), DataplaneError> {
        Dataplane::write_name(self, index, name)
    }
    fn adopt_vips(&self) -> Result<Vec<(String, SocketAddrV4, u32)>, DataplaneError> {
        self.read_vips()?
            .into_iter()
            .map(|(key, meta)| {
                Ok((
                    self.read_name(meta.index)?,
                    dataplane::socket_addr(&key),
                    meta.index,
                ))
            })
            .collect()
    }
    fn adopt_backends(&self) -> Result<Vec<(String, BackendSlot)>, DataplaneError> {
        self.read_backends()?
            .into_iter()
            .map(|b| Ok((self.read_name(backend_name_index(b.slot))?, b)))
            .collect()
    }
}

/// Makes the probe for a pool's health config (tests inject fakes).
pub type ProbeFactory = Arc<dyn Fn(&HealthConfig) -> Arc<dyn Probe> + Send + Sync>;
/// Counts established flows per backend slot (the real one walks the
/// pinned flow table; it runs on a blocking thread).
/// `None` when the count failed: the last good count stands.
pub type FlowCounter = Arc<dyn Fn() -> Option<HashMap<u32, u64>> + Send + Sync>;

/// How often the planner runs without an event: slow-start ramps and
/// watermark holds advance on this beat.
const TICK: Duration = Duration::from_millis(200);
/// How often established flows are counted (a walk of the flow table).
const FLOW_COUNT_EVERY: Duration = Duration::from_secs(2);
/// The flow count waits at least this many times as long as its last walk
/// took, bounding its CPU share to about 1/10 of a core.
const FLOW_COUNT_DUTY: u32 = 10;
/// A flow entry idle longer than this is not counted as established (the
/// flow table is an LRU; closed connections linger in it until evicted).
pub const FLOW_IDLE: Duration = Duration::from_secs(30);
/// Entries walked at most per count, bounding the walk's cost.
const FLOW_COUNT_LIMIT: usize = 1 << 20;
/// Weight of a new probe round trip in the smoothed one (as TCP's SRTT,
/// RFC 6298, but heavier: probes are seconds apart, not packets).
const RTT_GAIN: f64 = 0.25;
/// A backend removed by reload keeps its slot (draining) until it has no
/// established flow, or this long.
const RETIRE_AFTER: Duration = Duration::from_secs(300);
/// How often the host's addresses, MACs and redirect targets are written
/// again (one netlink dump). An address added meanwhile is unknown to the
/// program for at most this long: probes from it would have their replies
/// rewritten as client traffic until then.
pub const HOST_SYNC_EVERY: Duration = Duration::from_secs(3);

/// The `VipMeta::flags` a pool's config asks for.
pub fn vip_flags(pool: &PoolConfig) -> u32 {
    match pool.on_empty {
        OnEmpty::Reject => lb_common::VIP_F_REJECT_EMPTY,
        OnEmpty::Drop => 0,
    }
}

/// What a pool's VIP was last published with.
#[derive(Clone, Debug, PartialEq, Eq)]
struct PublishedRing {
    flags: u32,
    /// Maglev inputs: (slot, weight) of every active backend.
    inputs: Vec<(u32, u32)>,
}

type Key = (String, String);

/// Every backend of `config` and its address.
fn wanted_backends(config: &Config) -> HashMap<Key, SocketAddrV4> {
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

/// `BackendMeta::flags` bit: health says down, in an `on_down = "keep"`
/// pool, whose slot is written `DRAINING` so its flows run out instead of
/// being re-steered. The data plane ignores flags; the bit lets a restarted
/// controller tell this from a drain and seed the verdict. (User space
/// only; it belongs beside `BACKEND_F_OPERATOR_DRAIN` in lb-common once
/// the data-plane rewrite there lands.)
const BACKEND_F_HEALTH_DOWN: u8 = 2;
const _: () = assert!(BACKEND_F_HEALTH_DOWN & BACKEND_F_OPERATOR_DRAIN == 0);

/// The map state of a backend the planner put in `state`. A down backend
/// of an `on_down = "keep"` pool is `DRAINING` in the map: out of the ring,
/// its established flows left to run out (`DOWN` would re-steer them).
fn slot_state(on_down: OnDown, state: BackendState) -> u8 {
    match (state, on_down) {
        (BackendState::Down, OnDown::Keep) => BACKEND_DRAINING,
        (s, _) => s.map_value(),
    }
}

fn slot_flags(on_down: OnDown, state: BackendState, drained: bool) -> u8 {
    let mut f = 0;
    if drained {
        f |= BACKEND_F_OPERATOR_DRAIN;
    }
    if state == BackendState::Down && on_down == OnDown::Keep {
        f |= BACKEND_F_HEALTH_DOWN;
    }
    f
}

fn key(pool: &str, backend: &str) -> Key {
    (pool.to_string(), backend.to_string())
}

/// VIP indices and backend slots: stable for a pool or backend's life,
/// recovered from the pinned maps on restart. Freed slots queue FIFO so a
/// slot is reused as late as possible.
#[derive(Default)]
struct Slots {
    vips: HashMap<String, u32>,
    backends: HashMap<Key, u32>,
    free_vips: VecDeque<u32>,
    free_backends: VecDeque<u32>,
}

impl Slots {
    fn new(taken_vips: &HashSet<u32>, taken_backends: &HashSet<u32>) -> Slots {
        Slots {
            free_vips: (0..MAX_VIPS).filter(|i| !taken_vips.contains(i)).collect(),
            free_backends: (0..MAX_BACKENDS)
                .filter(|i| !taken_backends.contains(i))
                .collect(),
            ..Default::default()
        }
    }
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
}

/// The controller proper. Owns the data plane writer and all state.
pub struct Controller<D: DataplaneOps> {
    config_path: PathBuf,
    config: Config,
    dp: D,
    slots: Slots,
    planner: Planner,
    runtime: HashMap<Key, Runtime>,
    drained: HashSet<Key>,
    /// Established flows per slot, from the last count; `None` until the
    /// first count is in. "Not counted yet" is not zero: no retiring slot is
    /// freed before a count says it is idle.
    flows: Option<HashMap<u32, u64>>,
    /// When the last count began: a slot retired after that is not known
    /// to be idle by it.
    flows_at: Instant,
    /// The VIP address each pool has in the VIPS map (adopted or
    /// published), so a pool removed or re-addressed while the controller
    /// was down is taken out of the map even though no config named it.
    vip_addrs: HashMap<String, SocketAddrV4>,
    /// Backend metas as last written.
    written: HashMap<u32, BackendSlot>,
    /// What each pool's VIP was last published with.
    published: HashMap<String, PublishedRing>,
    /// Slots of backends removed by reload: (since, address, pool).
    retiring: HashMap<u32, (Instant, SocketAddrV4)>,
    checkers: HashMap<Key, Task>,
    pollers: HashMap<Key, Task>,
    task_owner: HashMap<u64, Key>,
    next_task_id: u64,
    health_tx: mpsc::Sender<HealthReport>,
    load_tx: mpsc::Sender<LoadReport>,
    probes: ProbeFactory,
    metrics: Option<Arc<Metrics>>,
    plan: Option<Plan>,
    epoch: Instant,
    /// Nothing is written before every backend has a first probe result
    /// (or this deadline passes).
    ready_deadline: Instant,
    ready: bool,
    /// `[announce]`: keeps BIRD's routes file in step (see [`crate::announce`]).
    announcer: Option<crate::announce::Announcer>,
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
        let vips = dp.adopt_vips()?;
        let backends = dp.adopt_backends()?;
        let taken_vips: HashSet<u32> = vips.iter().map(|v| v.2).collect();
        let taken_slots: HashSet<u32> = backends.iter().map(|b| b.1.slot).collect();
        let mut slots = Slots::new(&taken_vips, &taken_slots);
        let mut pool_of_index = HashMap::new();
        let mut published = HashMap::new();
        for (pool, vip, index) in &vips {
            info!(pool, %vip, index, "adopted VIP from the pinned data plane");
            slots.vips.insert(pool.clone(), *index);
            pool_of_index.insert(*index, pool.clone());
            published.insert(pool.clone(), *vip);
        }
        let mut drained = HashSet::new();
        let mut written = HashMap::new();
        let mut orphans = Vec::new();
        for (name, b) in backends {
            match pool_of_index.get(&b.vip_index) {
                Some(pool) => {
                    let k = key(pool, &name);
                    if b.flags & BACKEND_F_OPERATOR_DRAIN != 0 {
                        info!(pool, backend = name, "operator drain survives the restart");
                        drained.insert(k.clone());
                    }
                    slots.backends.insert(k, b.slot);
                    written.insert(b.slot, b);
                }
                None => orphans.push(b),
            }
        }
        let now = Instant::now();
        let max_timeout = config
            .pools
            .iter()
            .map(|p| p.health.timeout_ms)
            .max()
            .unwrap_or(0);
        let mut c = Controller {
            config_path,
            config: Config {
                pools: Vec::new(),
                ..config.clone()
            },
            dp,
            slots,
            planner: Planner::new(),
            runtime: HashMap::new(),
            drained,
            flows: None,
            flows_at: now,
            vip_addrs: published,
            written,
            published: HashMap::new(),
            retiring: HashMap::new(),
            checkers: HashMap::new(),
            pollers: HashMap::new(),
            task_owner: HashMap::new(),
            next_task_id: 1,
            health_tx,
            load_tx,
            probes,
            metrics,
            plan: None,
            epoch: now,
            ready_deadline: now + Duration::from_millis(max_timeout + 500),
            ready: false,
            announcer: None,
        };
        // Slots whose pool is gone (e.g. VIP removed while we were down).
        for b in orphans {
            c.retiring.insert(b.slot, (now, b.addr));
        }
        // Drains kept in the state file survive `xdplb down` and reboots,
        // which the maps' flags do not.
        if let Some(path) = &c.config.control.state_file {
            match crate::state::load(path) {
                Ok(saved) => {
                    for (pool, backend) in saved {
                        if c.drained.insert(key(&pool, &backend)) {
                            info!(pool, backend, "operator drain restored from the state file");
                        }
                    }
                }
                Err(e) => warn!(error = %e, "operator drains not restored"),
            }
        }
        c.install(config)?;
        if let Err(e) = c.persist_drains() {
            warn!(error = e, "operator drains not saved");
        }
        Ok((c, Inputs { health_rx, load_rx }))
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Backends that hold a slot but leave with `new` (gone from it, or
    /// re-addressed: a different server under the same name, whose flows
    /// belong to the old one): (key, slot, the address the slot points at,
    /// if it was ever written).
    fn gone_backends(&self, old: &Config, new: &Config) -> Vec<(Key, u32, Option<SocketAddrV4>)> {
        let wanted = wanted_backends(new);
        // Where a slot points now: what the data plane holds (adopted or
        // written), else what the old config said.
        let current = |k: &Key, slot: &u32| {
            self.written
                .get(slot)
                .map(|m| m.addr)
                .or_else(|| old.pool(&k.0).and_then(|p| p.backend(&k.1)).map(|b| b.addr))
        };
        let mut gone: Vec<_> = self
            .slots
            .backends
            .iter()
            .filter(|(k, slot)| match (wanted.get(*k), current(k, slot)) {
                (None, _) => true,
                (Some(new), Some(now)) => *new != now,
                (Some(_), None) => false,
            })
            .map(|(k, slot)| (k.clone(), *slot, current(k, slot)))
            .collect();
        gone.sort_by_key(|g| g.1);
        gone
    }

    /// Checks that `new` fits the data plane before anything is written, so
    /// an install or reload is applied whole or not at all. Slots of
    /// backends still retiring (draining their flows) are taken, unless the
    /// new config takes their address back.
    fn plan_capacity(&self, new: &Config) -> Result<(), ControllerError> {
        let gone_pools = self
            .slots
            .vips
            .keys()
            .filter(|n| new.pool(n).is_none())
            .count();
        let new_pools = new
            .pools
            .iter()
            .filter(|p| !self.slots.vips.contains_key(&p.name))
            .count();
        let free_vips = self.slots.free_vips.len() + gone_pools;
        if new_pools > free_vips {
            return Err(ControllerError::NoCapacity {
                what: "VIP indices",
                needed: new_pools,
                free: free_vips,
                retiring: 0,
                max: MAX_VIPS,
            });
        }
        let gone = self.gone_backends(&self.config, new);
        let gone_keys: HashSet<&Key> = gone.iter().map(|g| &g.0).collect();
        let new_addrs: HashSet<SocketAddrV4> = wanted_backends(new).into_values().collect();
        let needed = wanted_backends(new)
            .keys()
            .filter(|k| !self.slots.backends.contains_key(*k) || gone_keys.contains(k))
            .count();
        // Freed at once: slots never written, and retiring ones (already, or
        // by this change) whose address the new config takes back.
        let retiring_addrs = self
            .retiring
            .values()
            .map(|(_, a)| *a)
            .chain(gone.iter().filter_map(|g| g.2));
        let (reused, retiring) =
            retiring_addrs.fold((0, 0), |(r, t), a| match new_addrs.contains(&a) {
                true => (r + 1, t),
                false => (r, t + 1),
            });
        let unwritten = gone.iter().filter(|g| g.2.is_none()).count();
        let free = self.slots.free_backends.len() + unwritten + reused;
        if needed > free {
            return Err(ControllerError::NoCapacity {
                what: "backend slots",
                needed,
                free,
                retiring,
                max: MAX_BACKENDS,
            });
        }
        Ok(())
    }

    /// Makes `config` the running config: assigns slots, starts and stops
    /// probes and pollers, retires what disappeared. Returns a summary.
    /// Capacity is checked first: a config that does not fit changes
    /// nothing.
    fn install(&mut self, config: Config) -> Result<Vec<String>, ControllerError> {
        self.plan_capacity(&config)?;
        let mut summary = Vec::new();
        let old = std::mem::replace(&mut self.config, config);
        // Pools gone — from the old config, or only from the pins (removed
        // from the file while the controller was down): stop balancing the
        // VIP now; their slots retire below.
        let mut gone_pools: Vec<String> = old
            .pools
            .iter()
            .map(|p| p.name.clone())
            .chain(self.slots.vips.keys().cloned())
            .filter(|name| self.config.pool(name).is_none())
            .collect();
        gone_pools.sort();
        gone_pools.dedup();
        for name in gone_pools {
            let addr = self
                .vip_addrs
                .remove(&name)
                .or_else(|| old.pool(&name).map(|p| p.vip));
            // A VIP taken over by another pool stays in the map until that
            // pool's ring replaces the entry (no gap in service).
            if let Some(addr) = addr.filter(|a| self.config.pools.iter().all(|p| p.vip != *a)) {
                self.dp.remove_vip(addr)?;
            }
            if let Some(index) = self.slots.vips.remove(&name) {
                self.slots.free_vips.push_back(index);
            }
            self.published.remove(&name);
            if old.pool(&name).is_none() {
                info!(
                    pool = name,
                    "pool is pinned but no longer in the config: removed"
                );
            }
            summary.push(format!("removed pool {name}"));
        }
        // A pool whose VIP changed: the old address stops being balanced;
        // the new one is published on the next sync.
        let moved: Vec<(String, SocketAddrV4)> = self
            .vip_addrs
            .iter()
            .filter(|(name, addr)| self.config.pool(name).is_some_and(|p| p.vip != **addr))
            .map(|(n, a)| (n.clone(), *a))
            .collect();
        for (name, addr) in moved {
            if self.config.pools.iter().all(|p| p.vip != addr) {
                self.dp.remove_vip(addr)?;
            }
            self.vip_addrs.remove(&name);
            self.published.remove(&name);
        }
        // Backends gone (from surviving or removed pools), or re-addressed
        // (a different server under the same name: its flows belong to the
        // old one): drain, retire the slot.
        let wanted = wanted_backends(&self.config);
        let gone = self.gone_backends(&old, &self.config);
        for (k, slot, addr) in gone {
            self.slots.backends.remove(&k);
            self.checkers.remove(&k);
            self.pollers.remove(&k);
            self.runtime.remove(&k);
            let readdressed = wanted.contains_key(&k);
            if !readdressed {
                self.drained.remove(&k);
            }
            // A slot never written has no flows; it is freed on the next sync.
            if let Some(mut meta) = self.written.get(&slot).cloned() {
                meta.state = BACKEND_DRAINING;
                self.dp.write_backend(&meta)?;
                self.written.insert(slot, meta);
            }
            if let Some(addr) = addr {
                self.retiring.insert(slot, (Instant::now(), addr));
            } else {
                self.slots.free_backends.push_back(slot);
            }
            if readdressed {
                summary.push(format!("re-addressed backend {}/{}", k.0, k.1));
            } else if old.pool(&k.0).is_some() && self.config.pool(&k.0).is_some() {
                summary.push(format!("removed backend {}/{}", k.0, k.1));
            } else if old.pool(&k.0).is_none() {
                info!(
                    pool = k.0,
                    backend = k.1,
                    "backend is pinned but no longer in the config: draining, then retired"
                );
            }
        }
        // An address taken back from a retiring slot: that slot's replies
        // would now be claimed by the new one. Freed before any slot is
        // handed out (the capacity plan counted on it).
        let new_addrs: HashSet<SocketAddrV4> = wanted.values().copied().collect();
        let reused: Vec<u32> = self
            .retiring
            .iter()
            .filter(|(_, (_, addr))| new_addrs.contains(addr))
            .map(|(s, _)| *s)
            .collect();
        for s in reused {
            self.free_slot(s)?;
        }
        let pools = self.config.pools.clone();
        for pool in &pools {
            let new_pool = old.pool(&pool.name).is_none();
            let index = match self.slots.vips.get(&pool.name) {
                Some(&i) => i,
                None => {
                    let i = self.slots.free_vips.pop_front().ok_or_else(|| {
                        ControllerError::NoVipSlot {
                            pool: pool.name.clone(),
                            max: MAX_VIPS,
                        }
                    })?;
                    self.slots.vips.insert(pool.name.clone(), i);
                    i
                }
            };
            self.dp.write_name(index, &pool.name)?;
            if new_pool && !old.pools.is_empty() {
                summary.push(format!("added pool {} on {}", pool.name, pool.vip));
            } else if let Some(o) = old.pool(&pool.name) {
                if o != pool {
                    summary.push(format!("changed pool {}", pool.name));
                }
            }
            for b in &pool.backends {
                self.install_backend(pool, b, index, old.pool(&pool.name), &mut summary)?;
            }
        }
        Ok(summary)
    }

    fn install_backend(
        &mut self,
        pool: &PoolConfig,
        b: &BackendConfig,
        vip_index: u32,
        old_pool: Option<&PoolConfig>,
        summary: &mut Vec<String>,
    ) -> Result<(), ControllerError> {
        let k = key(&pool.name, &b.name);
        let slot = match self.slots.backends.get(&k) {
            Some(&s) => s,
            None => {
                let s = self.slots.free_backends.pop_front().ok_or_else(|| {
                    ControllerError::NoBackendSlot {
                        pool: pool.name.clone(),
                        backend: b.name.clone(),
                        max: MAX_BACKENDS,
                    }
                })?;
                self.slots.backends.insert(k.clone(), s);
                if old_pool.is_some() && old_pool.and_then(|p| p.backend(&b.name)).is_none() {
                    summary.push(format!("added backend {}/{}", pool.name, b.name));
                }
                s
            }
        };
        self.dp.write_name(backend_name_index(slot), &b.name)?;
        self.dp.write_reply(b.addr, pool.vip, slot, vip_index)?;
        // What the pinned data plane says of this very backend (same slot,
        // same address): its last verdict, kept until probes overturn it.
        let pinned_up = self
            .written
            .get(&slot)
            .filter(|m| m.addr == b.addr)
            .map(|m| m.state != BACKEND_DOWN && m.flags & BACKEND_F_HEALTH_DOWN == 0);
        let rt = self.runtime.entry(k.clone()).or_default();
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
        let health_fp = format!("{} {:?}", b.addr, pool.health);
        if self.checkers.get(&k).map(|t| &t.fingerprint) != Some(&health_fp) {
            // New probe rules restart the checker but keep the verdict (a
            // new address is a new backend, and starts over, above).
            let id = self.task_id(&k);
            let (stop, stop_rx) = watch::channel(false);
            let probe = (self.probes)(&pool.health);
            health::spawn_checker(
                id,
                b.addr,
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
        match &pool.load {
            Some(l) => {
                let agent = SocketAddrV4::new(*b.addr.ip(), l.agent_port);
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
        Ok(())
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

    fn free_slot(&mut self, slot: u32) -> Result<(), ControllerError> {
        if let Some((_, addr)) = self.retiring.remove(&slot) {
            // Only drop the reply entry if no live backend took the address.
            let taken = self
                .config
                .pools
                .iter()
                .any(|p| p.backends.iter().any(|b| b.addr == addr));
            if !taken {
                self.dp.remove_reply(addr)?;
            }
        }
        self.dp.free_backend(slot)?;
        self.written.remove(&slot);
        self.slots.free_backends.push_back(slot);
        Ok(())
    }

    /// A probe result. Returns true when the backend's health flipped.
    pub fn on_health(&mut self, r: HealthReport) -> bool {
        let Some(k) = self.owner(r.id, &self.checkers) else {
            return false;
        };
        if let Some(m) = &self.metrics {
            m.observe_health_check(&k.0, &k.1, r.duration, r.success);
        }
        let Some(rt) = self.runtime.get_mut(&k) else {
            return false;
        };
        rt.last_error = if r.success { None } else { r.error.clone() };
        rt.probed = true;
        if r.success {
            rt.rtt = Some(match rt.rtt {
                None => r.duration,
                Some(prev) => prev.mul_f64(1.0 - RTT_GAIN) + r.duration.mul_f64(RTT_GAIN),
            });
        }
        let flipped = rt.health.as_mut().and_then(|h| h.observe(r.success));
        match flipped {
            Some(true) => info!(pool = k.0, backend = k.1, "backend is up"),
            Some(false) => warn!(
                pool = k.0,
                backend = k.1,
                error = r.error.as_deref().unwrap_or(""),
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
                tracker.on_reply(now, reply);
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

    fn observations(&self) -> Observations {
        let now = self.now_ms();
        let mut obs = Observations::new();
        for pool in &self.config.pools {
            for b in &pool.backends {
                let k = key(&pool.name, &b.name);
                let rt = self.runtime.get(&k);
                let tracker = rt.and_then(|r| r.load.as_ref());
                let interval = pool.load.as_ref().map_or(1000, |l| l.interval_ms);
                let slot = self.slots.backends.get(&k);
                obs.insert(
                    k.clone(),
                    BackendObservation {
                        health: rt.and_then(|r| r.health.as_ref()).and_then(|h| h.up),
                        load: tracker.map(|t| t.score(now, interval)),
                        agent_state: tracker.and_then(|t| t.state(now, interval)),
                        agent_weight_pct: tracker.and_then(|t| t.weight_pct(now, interval)),
                        operator_drained: self.drained.contains(&k),
                        established_flows: self
                            .flows
                            .as_ref()
                            .map(|_| slot.map_or(0, |s| self.flows_of(*s))),
                    },
                );
            }
        }
        obs
    }

    fn all_probed(&self) -> bool {
        self.runtime.values().all(|r| r.probed)
    }

    /// Plans and writes the difference into the data plane.
    pub fn sync(&mut self) -> Result<(), ControllerError> {
        if !self.ready {
            if !self.all_probed() && Instant::now() < self.ready_deadline {
                return Ok(());
            }
            self.ready = true;
            info!("first probes in; taking over the data plane");
        }
        let obs = self.observations();
        let now = self.now_ms();
        let plan = self.planner.plan(&self.config, &obs, now);
        let mut down = Vec::new();
        let mut rings = Vec::new();
        for pool in &self.config.pools {
            let Some(&vip_index) = self.slots.vips.get(&pool.name) else {
                continue;
            };
            let Some(pp) = plan.pool(&pool.name) else {
                continue;
            };
            let mut inputs = Vec::new();
            for b in &pool.backends {
                let k = key(&pool.name, &b.name);
                let (Some(&slot), Some(bp)) = (self.slots.backends.get(&k), pp.backend(&b.name))
                else {
                    continue;
                };
                let meta = BackendSlot {
                    slot,
                    vip_index,
                    addr: b.addr,
                    state: slot_state(pool.on_down, bp.state),
                    flags: slot_flags(pool.on_down, bp.state, self.drained.contains(&k)),
                };
                if bp.state == BackendState::Active && bp.weight > 0 {
                    inputs.push((slot, bp.weight));
                }
                if self.written.get(&slot) == Some(&meta) {
                    continue;
                }
                if bp.state == BackendState::Down {
                    down.push(meta);
                } else {
                    self.dp.write_backend(&meta)?;
                    self.written.insert(slot, meta);
                }
            }
            let published = PublishedRing {
                flags: vip_flags(pool),
                inputs,
            };
            if self.published.get(&pool.name) != Some(&published) {
                rings.push((pool.name.clone(), pool.vip, vip_index, published));
            }
        }
        for (pool_name, vip, vip_index, published) in rings {
            let inputs = &published.inputs;
            let pool = self.config.pool(&pool_name).expect("pool from config");
            let names: HashMap<u32, &str> = pool
                .backends
                .iter()
                .filter_map(|b| {
                    self.slots
                        .backends
                        .get(&key(&pool.name, &b.name))
                        .map(|s| (*s, b.name.as_str()))
                })
                .collect();
            let entries: Vec<MaglevEntry> = inputs
                .iter()
                .map(|&(slot, weight)| MaglevEntry {
                    id: slot,
                    key: names[&slot],
                    weight,
                })
                .collect();
            let ring = maglev::build(&entries, self.config.dataplane.ring_size);
            self.dp
                .publish_vip(vip, vip_index, &ring, published.flags)?;
            debug!(
                pool = pool_name,
                active = inputs.len(),
                flags = published.flags,
                "ring published"
            );
            if inputs.is_empty() {
                warn!(
                    pool = pool_name,
                    "no usable backend: the VIP's ring is empty"
                );
            }
            self.vip_addrs.insert(pool_name.clone(), vip);
            self.published.insert(pool_name, published);
        }
        for meta in down {
            self.dp.write_backend(&meta)?;
            self.written.insert(meta.slot, meta);
        }
        // Retired slots with no flows left (or past their time) are freed;
        // only a count begun after the slot retired can say it is idle.
        let done: Vec<u32> = self
            .retiring
            .iter()
            .filter(|(slot, (since, _))| {
                let idle = self.flows_at >= *since
                    && self
                        .flows
                        .as_ref()
                        .is_some_and(|f| f.get(slot).copied().unwrap_or(0) == 0);
                idle || since.elapsed() > RETIRE_AFTER
            })
            .map(|(s, _)| *s)
            .collect();
        for slot in done {
            self.free_slot(slot)?;
        }
        // [announce]: a VIP is announced while its ring has an active backend.
        let wanted = self
            .config
            .pools
            .iter()
            .filter(|p| {
                self.published
                    .get(&p.name)
                    .is_some_and(|r| !r.inputs.is_empty())
            })
            .map(|p| (p.name.clone(), std::net::IpAddr::V4(*p.vip.ip())))
            .collect();
        crate::announce::Announcer::sync(
            &mut self.announcer,
            self.config.announce.as_ref(),
            wanted,
        );
        self.plan = Some(plan);
        if let Some(m) = &self.metrics {
            m.set_status(&self.status());
        }
        Ok(())
    }

    pub fn status(&self) -> Status {
        let now = self.now_ms();
        let pools = self
            .config
            .pools
            .iter()
            .map(|pool| {
                let pp = self.plan.as_ref().and_then(|p| p.pool(&pool.name));
                PoolStatus {
                    name: pool.name.clone(),
                    vip: pool.vip.to_string(),
                    mode: format!("{:?}", pool.mode).to_lowercase(),
                    min_active: pool.min_active,
                    on_empty: match pool.on_empty {
                        OnEmpty::Reject => "reject",
                        OnEmpty::Drop => "drop",
                    }
                    .to_string(),
                    empty: self
                        .published
                        .get(&pool.name)
                        .is_some_and(|r| r.inputs.is_empty()),
                    mean_load: pp.and_then(|p| p.mean_load),
                    announced: self.announcer.as_ref().map(|a| a.announces(&pool.name)),
                    backends: pool
                        .backends
                        .iter()
                        .map(|b| {
                            let k = key(&pool.name, &b.name);
                            let rt = self.runtime.get(&k);
                            let bp = pp.and_then(|p| p.backend(&b.name));
                            let up = rt
                                .and_then(|r| r.health.as_ref())
                                .and_then(|h| h.up)
                                .unwrap_or(false);
                            let interval = pool.load.as_ref().map_or(1000, |l| l.interval_ms);
                            BackendStatus {
                                name: b.name.clone(),
                                addr: b.addr.to_string(),
                                role: match b.role {
                                    Role::Primary => "primary",
                                    Role::Spare => "spare",
                                }
                                .to_string(),
                                health: if up { "up" } else { "down" }.to_string(),
                                state: bp
                                    .map_or(BackendState::Down, |p| p.state)
                                    .as_str()
                                    .to_string(),
                                weight: bp.map_or(0, |p| p.weight),
                                config_weight: b.weight,
                                load: rt
                                    .and_then(|r| r.load.as_ref())
                                    .map_or(0.0, |t| t.score(now, interval)),
                                flows: self.slots.backends.get(&k).map_or(0, |s| self.flows_of(*s)),
                                reason: bp
                                    .map_or(crate::planner::Reason::NotProbed, |p| p.reason)
                                    .as_str()
                                    .to_string(),
                                operator_drained: self.drained.contains(&k),
                                agent: rt.and_then(|r| r.agent_line.clone()),
                                last_error: rt.and_then(|r| r.last_error.clone()),
                                rtt_ms: rt.and_then(|r| r.rtt).map(|d| d.as_secs_f64() * 1000.0),
                                agent_up: rt.and_then(|r| r.agent_up),
                                agent_error: rt.and_then(|r| r.agent_error.clone()),
                            }
                        })
                        .collect(),
                }
            })
            .collect();
        Status { pools }
    }

    /// Writes the operator drains of backends in the config to the state
    /// file (if there is one).
    fn persist_drains(&mut self) -> Result<(), String> {
        let config = &self.config;
        self.drained
            .retain(|(p, b)| config.pool(p).is_some_and(|pool| pool.backend(b).is_some()));
        let Some(path) = &self.config.control.state_file else {
            return Ok(());
        };
        // Nothing to keep and nothing kept: no file (a host that never
        // drains gets no /var/lib/xdplb).
        if self.drained.is_empty() && !path.exists() {
            return Ok(());
        }
        let drains = self.drained.iter().cloned().collect();
        crate::state::save(path, &drains).map_err(|e| e.to_string())
    }

    pub fn drain(&mut self, pool: &str, backend: &str, drain: bool) -> Result<(), String> {
        let p = self
            .config
            .pool(pool)
            .ok_or_else(|| format!("unknown pool {pool:?}"))?;
        if p.backend(backend).is_none() {
            return Err(format!("unknown backend {backend:?} in pool {pool:?}"));
        }
        let k = key(pool, backend);
        if drain {
            self.drained.insert(k);
        } else {
            self.drained.remove(&k);
        }
        info!(pool, backend, drain, "operator drain");
        self.sync().map_err(|e| e.to_string())?;
        self.persist_drains().map_err(|e| {
            format!(
                "{pool}/{backend}: applied, but it will not survive `xdplb down` or a reboot: {e}"
            )
        })
    }

    /// Re-reads the config file and applies it, or refuses it with the
    /// reason and changes nothing.
    pub fn reload(&mut self) -> Result<String, String> {
        let new = config::load(&self.config_path).map_err(|e| e.to_string())?;
        config::check_interfaces_exist(&new).map_err(|e| e.to_string())?;
        if new.dataplane != self.config.dataplane {
            return Err(format!(
                "{}: [dataplane] changed; it shapes the pinned maps and attachments, so it \
                 needs `xdplb down` and a fresh `xdplb run` (this drops established flows)",
                self.config_path.display()
            ));
        }
        if new.control != self.config.control {
            return Err(format!(
                "{}: [control] changed; restart `xdplb run` to rebind the admin socket or \
                 metrics listener (the data plane keeps forwarding meanwhile)",
                self.config_path.display()
            ));
        }
        let summary = self.install(new).map_err(|e| e.to_string())?;
        self.sync().map_err(|e| e.to_string())?;
        if let Err(e) = self.persist_drains() {
            warn!(error = e, "operator drains not saved");
        }
        let summary = if summary.is_empty() {
            "no change".to_string()
        } else {
            summary.join("; ")
        };
        info!(summary, "config reloaded");
        Ok(summary)
    }

    pub fn on_command(&mut self, cmd: Command) {
        match cmd {
            Command::Status { reply } => {
                let _ = reply.send(self.status());
            }
            Command::Drain {
                pool,
                backend,
                drain,
                reply,
            } => {
                let _ = reply.send(self.drain(&pool, &backend, drain));
            }
            Command::Reload { reply } => {
                let r = self.reload();
                if let Err(e) = &r {
                    warn!(error = e, "reload refused");
                }
                let _ = reply.send(r);
            }
        }
    }

    /// Rewrites the host's addresses, MACs and redirect targets into the
    /// data plane. A failure is logged and retried on the next beat; the
    /// program keeps the last good values.
    pub fn sync_host(&mut self) {
        if let Err(e) = self.dp.sync_host(&self.config.dataplane.interfaces) {
            error!(error = %e, "writing host addresses into the data plane failed");
        }
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
        loop {
            let sync_now = tokio::select! {
                _ = &mut shutdown => break,
                Some(r) = inputs.health_rx.recv() => self.on_health(r),
                Some(r) = inputs.load_rx.recv() => { self.on_load(r); false }
                Some(cmd) = commands.recv() => { self.on_command(cmd); false }
                Some(()) = reload.recv() => {
                    match self.reload() {
                        Ok(s) => info!(summary = s, "reload (signal) applied"),
                        Err(e) => error!(error = e, "reload (signal) refused; running config unchanged"),
                    }
                    false
                }
                Some((at, flows)) = flows_rx.recv() => { self.set_flows_since(at, flows); false }
                _ = host_tick.tick() => { self.sync_host(); false }
                _ = tick.tick() => true,
            };
            if sync_now {
                if let Err(e) = self.sync() {
                    // A failed map write is retried on the next beat; the
                    // data plane keeps its last good state meanwhile.
                    error!(error = %e, "data plane sync failed");
                }
            }
        }
        info!("controller stopping; the data plane stays pinned and forwarding");
        Ok(())
    }
}

/// Signals: SIGTERM/SIGINT end `run` (data plane left forwarding),
/// SIGHUP reloads.
fn signals() -> std::io::Result<(impl std::future::Future<Output = ()>, mpsc::Receiver<()>)> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    let (tx, rx) = mpsc::channel(4);
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            let _ = tx.try_send(());
        }
    });
    let stop = async move {
        tokio::select! {
            _ = term.recv() => info!("SIGTERM"),
            _ = int.recv() => info!("SIGINT"),
        }
    };
    Ok((stop, rx))
}

fn attach_mode(m: config::XdpMode) -> AttachMode {
    match m {
        config::XdpMode::Auto => AttachMode::Auto,
        config::XdpMode::Native => AttachMode::Native,
        config::XdpMode::Generic => AttachMode::Generic,
    }
}

/// `xdplb run --config PATH`: the daemon.
pub async fn run(config_path: PathBuf) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let config = config::load(&config_path)?;
    config::check_interfaces_exist(&config)?;
    // One owner per pinned data plane, whatever the admin socket: a second
    // controller fails here, before it touches what the first one runs.
    let owner = crate::owner::acquire(
        Path::new(crate::owner::LOCK_DIR),
        &config.dataplane.pin_path,
    )?;
    // Under `ip netns exec` this is the host's bpffs through /proc/1/root.
    let pin_path = dataplane::prepare_pin_path(&config.dataplane.pin_path)?;
    let socket = config.control.admin_socket.clone();
    let listener = crate::admin::bind(&socket).await?;
    let mut dp = Dataplane::load_tuned(
        Shape {
            pin_path: pin_path.clone(),
            ring_size: config.dataplane.ring_size,
            flow_table_size: config.dataplane.flow_table_size,
        },
        dataplane::Tuning {
            max_flow_inserts_per_sec: config.dataplane.max_flow_inserts_per_sec,
        },
    )?;
    for iface in &config.dataplane.interfaces {
        dp.attach(iface, attach_mode(config.dataplane.xdp_mode))?;
        info!(iface, pin = %pin_path.display(), "XDP program attached (link pinned)");
        if Dataplane::driver(iface).as_deref() == Some("veth") {
            // The kernel drops frames redirected into a veth whose peer has
            // neither an XDP program nor GRO, without a trace.
            warn!(
                iface,
                "veth: frames redirected out of this interface are dropped unless its peer runs \
                 an XDP program or has GRO on (`ethtool -K PEER gro on`); check `xdplb stats` \
                 against what the backends receive"
            );
        }
    }
    match dp.logger(log::logger()) {
        Ok(logger) => forward_ebpf_logs(logger)?,
        Err(e) => warn!(error = %e, "the XDP program's log messages will not be shown"),
    }
    for iface in dp.prune_links(&config.dataplane.interfaces)? {
        info!(iface, "detached: no longer in the config's interfaces");
    }
    // Before any ring is written: the program must know this host's
    // addresses to tell replies to our own probes from client traffic.
    dp.sync_host(&config.dataplane.interfaces)
        .context("writing this host's addresses and interfaces into the data plane")?;
    let (shutdown, reload_rx) = signals()?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let metrics = Metrics::new(pin_path.clone());
    let (cmd_tx, cmd_rx) = mpsc::channel(64);
    let admin = {
        let mut stop = stop_rx.clone();
        tokio::spawn(async move {
            let done = async move {
                let _ = stop.wait_for(|s| *s).await;
            };
            crate::admin::serve_on(listener, cmd_tx, done).await;
        })
    };
    info!(socket = %socket.display(), "admin socket");
    let metrics_task = config.control.metrics_listen.map(|listen| {
        let m = metrics.clone();
        let mut stop = stop_rx.clone();
        tokio::spawn(async move {
            let done = async move {
                let _ = stop.wait_for(|s| *s).await;
            };
            if let Err(e) = crate::metrics::serve(listen, m, done).await {
                error!(error = %e, "metrics listener failed");
            }
        })
    });
    let probes: ProbeFactory = Arc::new(health::probe_for);
    let (controller, inputs) = Controller::new(config_path, config, dp, probes, Some(metrics))?;
    let pin = pin_path.clone();
    let counter: FlowCounter = Arc::new(move || count_flows(&pin));
    let result = controller
        .run(inputs, cmd_rx, reload_rx, Some(counter), shutdown)
        .await;
    let _ = stop_tx.send(true);
    let _ = admin.await;
    if let Some(t) = metrics_task {
        let _ = t.await;
    }
    drop(owner);
    result?;
    Ok(())
}

/// Drains the XDP program's log ring into our log whenever it has data.
fn forward_ebpf_logs(logger: aya_log::EbpfLogger<&'static dyn log::Log>) -> std::io::Result<()> {
    use tokio::io::{unix::AsyncFd, Interest};
    // SAFETY: the logger owns its ring-buffer fd: it stays open, and is the
    // one `as_raw_fd` returns, for as long as the logger lives.
    let mut fd = unsafe { AsyncFd::register_with_interest(logger, Interest::READABLE) }
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    tokio::spawn(async move {
        while let Ok(mut ready) = fd.readable_mut().await {
            ready.get_inner_mut().flush();
            ready.clear_ready();
        }
    });
    Ok(())
}

fn count_flows(pin_path: &Path) -> Option<HashMap<u32, u64>> {
    match dataplane::flow_counts(pin_path, FLOW_COUNT_LIMIT, FLOW_IDLE) {
        Ok(c) => Some(c),
        Err(e) => {
            // Not zero: a failed count frees nothing.
            warn!(error = %e, "counting flows failed");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    //! The controller against a fake data plane and fake probes, with
    //! tokio's clock paused: every transition is driven by advancing time.
    use std::sync::Mutex;

    use lb_common::{BACKEND_ACTIVE, BACKEND_DOWN, BACKEND_STANDBY, NO_BACKEND};

    use super::*;
    use crate::health::ProbeFuture;

    /// A map write, in order.
    #[derive(Clone, Debug, PartialEq)]
    enum Op {
        Publish {
            vip_index: u32,
            slots: Vec<u32>,
            flags: u32,
        },
        Backend(BackendSlot),
        Free(u32),
        RemoveReply(SocketAddrV4),
        RemoveVip(SocketAddrV4),
    }

    #[derive(Default)]
    struct Fake {
        ops: Vec<Op>,
        /// The interfaces of every `sync_host` call (shared: the test
        /// reads it while `run` owns the fake).
        host_syncs: Arc<Mutex<Vec<Vec<String>>>>,
        vips: HashMap<SocketAddrV4, (u32, Vec<u32>)>,
        backends: HashMap<u32, BackendSlot>,
        names: HashMap<u32, String>,
    }

    impl Fake {
        /// State of the one live slot named `name` (a retiring slot may
        /// share the name: that is ambiguous, and refused).
        fn state(&self, name: &str) -> u8 {
            let slots: Vec<u32> = self
                .names
                .iter()
                .filter(|(i, n)| **i >= MAX_VIPS && n.as_str() == name)
                .map(|(i, _)| i - MAX_VIPS)
                .filter(|s| self.backends.contains_key(s))
                .collect();
            assert_eq!(slots.len(), 1, "slots named {name}: {slots:?}");
            self.backends[&slots[0]].state
        }

        /// Names of the backends the VIP's ring holds.
        fn ring_members(&self, vip: &str) -> Vec<String> {
            let (_, ring) = &self.vips[&vip.parse().unwrap()];
            let mut m: Vec<String> = ring
                .iter()
                .filter(|s| **s != NO_BACKEND)
                .map(|s| self.names[&(MAX_VIPS + s)].clone())
                .collect();
            m.sort();
            m.dedup();
            m
        }
    }

    impl DataplaneOps for Fake {
        fn publish_vip(
            &mut self,
            vip: SocketAddrV4,
            idx: u32,
            ring: &[u32],
            flags: u32,
        ) -> Result<(), DataplaneError> {
            let mut slots: Vec<u32> = ring.iter().copied().filter(|s| *s != NO_BACKEND).collect();
            slots.sort();
            slots.dedup();
            self.ops.push(Op::Publish {
                vip_index: idx,
                slots,
                flags,
            });
            self.vips.insert(vip, (idx, ring.to_vec()));
            Ok(())
        }
        fn sync_host(&mut self, interfaces: &[String]) -> Result<(), DataplaneError> {
            self.host_syncs.lock().unwrap().push(interfaces.to_vec());
            Ok(())
        }
        fn remove_vip(&mut self, vip: SocketAddrV4) -> Result<(), DataplaneError> {
            self.ops.push(Op::RemoveVip(vip));
            self.vips.remove(&vip);
            Ok(())
        }
        fn write_backend(&mut self, slot: &BackendSlot) -> Result<(), DataplaneError> {
            self.ops.push(Op::Backend(slot.clone()));
            self.backends.insert(slot.slot, slot.clone());
            Ok(())
        }
        fn free_backend(&mut self, slot: u32) -> Result<(), DataplaneError> {
            self.ops.push(Op::Free(slot));
            self.backends.remove(&slot);
            Ok(())
        }
        fn write_reply(
            &mut self,
            _: SocketAddrV4,
            _: SocketAddrV4,
            _: u32,
            _: u32,
        ) -> Result<(), DataplaneError> {
            Ok(())
        }
        fn remove_reply(&mut self, backend: SocketAddrV4) -> Result<(), DataplaneError> {
            self.ops.push(Op::RemoveReply(backend));
            Ok(())
        }
        fn write_name(&mut self, index: u32, name: &str) -> Result<(), DataplaneError> {
            self.names.insert(index, name.to_string());
            Ok(())
        }
        fn adopt_vips(&self) -> Result<Vec<(String, SocketAddrV4, u32)>, DataplaneError> {
            Ok(self
                .vips
                .iter()
                .map(|(vip, (i, _))| (self.names[i].clone(), *vip, *i))
                .collect())
        }
        fn adopt_backends(&self) -> Result<Vec<(String, BackendSlot)>, DataplaneError> {
            Ok(self
                .backends
                .values()
                .map(|b| (self.names[&(MAX_VIPS + b.slot)].clone(), b.clone()))
                .collect())
        }
    }

    /// Probes answer from a table the test flips, after a delay it sets.
    #[derive(Default)]
    struct FakeProbes {
        up: Mutex<HashMap<SocketAddrV4, bool>>,
        delay: Mutex<HashMap<SocketAddrV4, Duration>>,
    }

    impl FakeProbes {
        fn set(&self, addr: &str, up: bool) {
            self.up.lock().unwrap().insert(addr.parse().unwrap(), up);
        }

        fn set_delay(&self, addr: &str, d: Duration) {
            self.delay.lock().unwrap().insert(addr.parse().unwrap(), d);
        }
    }

    impl Probe for FakeProbes {
        fn check(&self, addr: SocketAddrV4, _timeout: Duration) -> ProbeFuture<'_> {
            let up = self.up.lock().unwrap().get(&addr).copied().unwrap_or(true);
            let delay = self.delay.lock().unwrap().get(&addr).copied();
            Box::pin(async move {
                if let Some(d) = delay {
                    tokio::time::sleep(d).await;
                }
                if up {
                    Ok(())
                } else {
                    Err(health::HealthError::Connect {
                        addr,
                        source: std::io::Error::from(std::io::ErrorKind::ConnectionRefused),
                    })
                }
            })
        }
    }

    const CONFIG: &str = r#"
[dataplane]
interfaces = ["lo"]
ring_size = 1009

[[pool]]
name = "web"
vip = "198.18.2.10:80"
min_active = 2
  [pool.health]
  interval_ms = 100
  timeout_ms = 50
  rise = 2
  fall = 2
  [[pool.backend]]
  name = "web-1"
  addr = "198.18.1.11:8080"
  [[pool.backend]]
  name = "web-2"
  addr = "198.18.1.12:8080"
  [[pool.backend]]
  name = "spare-1"
  addr = "198.18.1.21:8080"
  role = "spare"
"#;

    struct Rig {
        c: Controller<Fake>,
        inputs: Inputs,
        probes: Arc<FakeProbes>,
        dir: PathBuf,
    }

    impl Drop for Rig {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    fn rig_with(fake: Fake, probes: Arc<FakeProbes>, text: &str) -> Rig {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "xdplb-ctl-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("xdplb.toml");
        std::fs::write(&path, with_state_file(&dir, text)).unwrap();
        let cfg = config::load(&path).unwrap();
        let p = probes.clone();
        let factory: ProbeFactory = Arc::new(move |_| p.clone() as Arc<dyn Probe>);
        let (c, inputs) = Controller::new(path, cfg, fake, factory, None).unwrap();
        Rig {
            c,
            inputs,
            probes,
            dir,
        }
    }

    /// `text` with a `[control]` section keeping the state file in `dir`
    /// (never the default one under /var/lib), unless it has its own.
    fn with_state_file(dir: &Path, text: &str) -> String {
        if text.contains("[control]") {
            return text.to_string();
        }
        format!(
            "{text}\n[control]\nstate_file = \"{}\"\n",
            dir.join("state.json").display()
        )
    }

    fn rig() -> Rig {
        rig_with(Fake::default(), Arc::new(FakeProbes::default()), CONFIG)
    }

    impl Rig {
        /// Advances the paused clock by `d` in 10 ms steps, feeding every
        /// probe report to the controller and syncing, as `run` does.
        async fn pump(&mut self, d: Duration) {
            self.pump_by(d, Duration::from_millis(10)).await
        }

        /// [`pump`](Rig::pump) in steps of `step` (coarser: cheaper with
        /// thousands of backends).
        async fn pump_by(&mut self, d: Duration, step: Duration) {
            let end = Instant::now() + d;
            while Instant::now() < end {
                tokio::time::advance(step).await;
                // Until no report is left (checkers blocked on a full
                // channel get to send once it drains), as `run` would.
                loop {
                    tokio::task::yield_now().await;
                    let mut any = false;
                    while let Ok(r) = self.inputs.health_rx.try_recv() {
                        self.c.on_health(r);
                        any = true;
                    }
                    if !any {
                        break;
                    }
                }
                self.c.sync().unwrap();
            }
        }

        /// Rewrites the config file (for a reload).
        fn write_config(&self, text: impl AsRef<str>) {
            let text = with_state_file(&self.dir, text.as_ref());
            std::fs::write(&self.c.config_path, text).unwrap();
        }

        fn fake(&self) -> &Fake {
            &self.c.dp
        }
    }

    #[tokio::test(start_paused = true)]
    async fn primaries_serve_and_the_spare_stands_by() {
        let mut r = rig();
        r.pump(Duration::from_millis(300)).await;
        let f = r.fake();
        assert_eq!(f.state("web-1"), BACKEND_ACTIVE);
        assert_eq!(f.state("web-2"), BACKEND_ACTIVE);
        assert_eq!(f.state("spare-1"), BACKEND_STANDBY);
        assert_eq!(f.ring_members("198.18.2.10:80"), ["web-1", "web-2"]);
    }

    #[tokio::test(start_paused = true)]
    async fn nothing_is_written_before_every_backend_is_probed() {
        let mut r = rig();
        // No time has passed: no probe has reported yet.
        r.c.sync().unwrap();
        assert!(r.fake().ops.is_empty(), "{:?}", r.fake().ops);
        r.pump(Duration::from_millis(30)).await;
        assert!(!r.fake().ops.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_primary_leaves_the_ring_before_it_is_marked_down() {
        let mut r = rig();
        r.pump(Duration::from_millis(300)).await;
        let before = r.fake().ops.len();
        r.probes.set("198.18.1.11:8080", false);
        // fall = 2 at interval 100 ms: down within 2 intervals.
        r.pump(Duration::from_millis(250)).await;
        let f = r.fake();
        assert_eq!(f.state("web-1"), BACKEND_DOWN);
        assert_eq!(f.state("spare-1"), BACKEND_ACTIVE, "spare fills min_active");
        assert_eq!(f.ring_members("198.18.2.10:80"), ["spare-1", "web-2"]);
        let ops = &f.ops[before..];
        let publish = ops
            .iter()
            .position(|o| matches!(o, Op::Publish { .. }))
            .expect("ring republished");
        let down = ops
            .iter()
            .position(|o| matches!(o, Op::Backend(b) if b.state == BACKEND_DOWN))
            .expect("marked down");
        let spare_up = ops
            .iter()
            .position(|o| matches!(o, Op::Backend(b) if b.state == BACKEND_ACTIVE))
            .expect("spare marked active");
        assert!(
            spare_up < publish,
            "spare marked before a ring names it: {ops:?}"
        );
        assert!(publish < down, "ring published before re-steering: {ops:?}");
    }

    /// `[announce]`: nothing is written before the first probes; the VIP
    /// is announced while its ring has a backend and withdrawn when the
    /// pool empties; BIRD missing is no error.
    #[tokio::test(start_paused = true)]
    async fn announce_follows_the_ring_and_survives_a_missing_bird() {
        let dir = std::env::temp_dir().join(format!("xdplb-ctl-announce-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let routes = dir.join("vips.conf");
        let text = format!(
            "{CONFIG}\n[announce]\ncontrol_socket = \"{}\"\nroutes_file = \"{}\"\n",
            dir.join("no-bird.ctl").display(),
            routes.display()
        );
        let mut r = rig_with(Fake::default(), Arc::new(FakeProbes::default()), &text);
        assert_eq!(
            r.c.status().pools[0].announced,
            None,
            "undecided before a sync"
        );
        assert!(!routes.exists(), "nothing written before the first probes");
        r.pump(Duration::from_millis(300)).await;
        assert_eq!(r.c.status().pools[0].announced, Some(true));
        let read = || std::fs::read_to_string(&routes).unwrap_or_default();
        assert!(
            read().contains("route 198.18.2.10/32 blackhole;"),
            "{}",
            read()
        );
        for b in ["198.18.1.11:8080", "198.18.1.12:8080", "198.18.1.21:8080"] {
            r.probes.set(b, false);
        }
        r.pump(Duration::from_millis(300)).await;
        assert!(r.c.status().pools[0].empty);
        assert_eq!(r.c.status().pools[0].announced, Some(false));
        assert!(!read().contains("198.18.2.10"), "{}", read());
        assert!(read().contains("protocol static xdplb_vips {"));
        r.probes.set("198.18.1.12:8080", true);
        r.pump(Duration::from_millis(300)).await;
        assert!(read().contains("198.18.2.10/32"), "{}", read());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_pool_with_every_backend_down_shows_empty_until_one_returns() {
        let mut r = rig();
        assert!(!r.c.status().pools[0].empty, "not empty before any ring");
        r.pump(Duration::from_millis(300)).await;
        let st = r.c.status();
        assert!(!st.pools[0].empty);
        assert_eq!(st.pools[0].on_empty, "reject");
        for b in ["198.18.1.11:8080", "198.18.1.12:8080", "198.18.1.21:8080"] {
            r.probes.set(b, false);
        }
        r.pump(Duration::from_millis(300)).await;
        assert!(r.fake().ring_members("198.18.2.10:80").is_empty());
        let st = r.c.status();
        assert!(st.pools[0].empty, "{st:?}");
        assert!(st.pools[0].backends.iter().all(|b| b.state == "down"));
        r.probes.set("198.18.1.12:8080", true);
        r.pump(Duration::from_millis(300)).await;
        assert_eq!(r.fake().ring_members("198.18.2.10:80"), ["web-2"]);
        assert!(!r.c.status().pools[0].empty);
    }

    #[tokio::test(start_paused = true)]
    async fn a_recovered_primary_sends_the_spare_back_after_its_flows_end() {
        let mut r = rig();
        r.pump(Duration::from_millis(300)).await;
        r.probes.set("198.18.1.11:8080", false);
        r.pump(Duration::from_millis(300)).await;
        assert_eq!(r.fake().state("spare-1"), BACKEND_ACTIVE);
        let spare_slot = r.c.slots.backends[&key("web", "spare-1")];
        r.c.set_flows(HashMap::from([(spare_slot, 3)]));
        r.probes.set("198.18.1.11:8080", true);
        // rise = 2.
        r.pump(Duration::from_millis(300)).await;
        assert_eq!(r.fake().state("web-1"), BACKEND_ACTIVE);
        assert_eq!(r.fake().state("spare-1"), lb_common::BACKEND_DRAINING);
        assert_eq!(r.fake().ring_members("198.18.2.10:80"), ["web-1", "web-2"]);
        r.c.set_flows(HashMap::new());
        r.pump(Duration::from_millis(50)).await;
        assert_eq!(r.fake().state("spare-1"), BACKEND_STANDBY);
    }

    #[tokio::test(start_paused = true)]
    async fn a_restarted_controller_adopts_slots_and_drains_and_rewrites_nothing() {
        let mut r = rig();
        r.pump(Duration::from_millis(300)).await;
        r.c.drain("web", "web-2", true).unwrap();
        assert_eq!(r.fake().state("web-2"), lb_common::BACKEND_DRAINING);
        let slots = r.c.slots.backends.clone();
        let ring = r.fake().vips[&"198.18.2.10:80".parse().unwrap()].1.clone();
        let probes = r.probes.clone();
        // "Restart": a new controller over the same data plane.
        let mut fake = std::mem::take(&mut r.c.dp);
        fake.ops.clear();
        drop(r);
        let mut r = rig_with(fake, probes, CONFIG);
        assert_eq!(r.c.slots.backends, slots, "slots recovered from the maps");
        assert!(
            r.c.drained.contains(&key("web", "web-2")),
            "drain recovered"
        );
        r.pump(Duration::from_millis(300)).await;
        // Same states, same rings: nothing needed rewriting but the ring
        // publish of the new process (which the data plane skips when equal).
        let f = r.fake();
        // Not vacuous: the new controller did take over (it published),
        // and what it published is the ring it found.
        assert!(
            f.ops.iter().any(|o| matches!(o, Op::Publish { .. })),
            "the restarted controller never took over: {:?}",
            f.ops
        );
        assert!(
            f.ops.iter().all(|o| matches!(o, Op::Publish { .. })),
            "unexpected writes after restart: {:?}",
            f.ops
        );
        assert_eq!(f.vips[&"198.18.2.10:80".parse().unwrap()].1, ring);
        assert_eq!(f.state("web-2"), lb_common::BACKEND_DRAINING);
    }

    /// CONFIG plus a second pool, "api", with one backend.
    fn two_pools() -> String {
        format!(
            "{CONFIG}
[[pool]]
name = \"api\"
vip = \"198.18.2.11:80\"
  [pool.health]
  interval_ms = 100
  timeout_ms = 50
  [[pool.backend]]
  name = \"api-1\"
  addr = \"198.18.1.41:8080\"
"
        )
    }

    /// A "restart": a new controller over the same data plane (and probes)
    /// with the config `text`.
    fn restart(mut r: Rig, text: &str) -> Rig {
        let probes = r.probes.clone();
        let mut fake = std::mem::take(&mut r.c.dp);
        fake.ops.clear();
        drop(r);
        rig_with(fake, probes, text)
    }

    #[tokio::test(start_paused = true)]
    async fn a_restart_removes_what_the_file_no_longer_has() {
        let mut r = rig_with(
            Fake::default(),
            Arc::new(FakeProbes::default()),
            &two_pools(),
        );
        r.pump(Duration::from_millis(300)).await;
        let api_vip: SocketAddrV4 = "198.18.2.11:80".parse().unwrap();
        assert!(r.fake().vips.contains_key(&api_vip));
        let web2 = r.c.slots.backends[&key("web", "web-2")];
        let api1 = r.c.slots.backends[&key("api", "api-1")];
        let api_index = r.c.slots.vips["api"];
        // Pool "api" and backend web-2 leave the file while we are down.
        let edited = CONFIG.replace(
            "  [[pool.backend]]\n  name = \"web-2\"\n  addr = \"198.18.1.12:8080\"\n",
            "",
        );
        assert_ne!(edited, CONFIG);
        let mut r = restart(r, &edited);
        // The removed VIP stops taking new flows at once.
        assert!(
            r.fake().ops.contains(&Op::RemoveVip(api_vip)),
            "{:?}",
            r.fake().ops
        );
        assert!(!r.fake().vips.contains_key(&api_vip));
        // The removed backends drain (established flows continue) ...
        for slot in [web2, api1] {
            assert_eq!(r.fake().backends[&slot].state, lb_common::BACKEND_DRAINING);
        }
        r.pump(Duration::from_millis(300)).await;
        // min_active = 2 with one primary left: the spare fills in.
        assert_eq!(
            r.fake().ring_members("198.18.2.10:80"),
            ["spare-1", "web-1"]
        );
        // ... and, flows not counted yet, nothing is freed: not counted is
        // not zero.
        assert!(
            !r.fake().ops.iter().any(|o| matches!(o, Op::Free(_))),
            "{:?}",
            r.fake().ops
        );
        r.c.set_flows(HashMap::from([(web2, 1)]));
        r.pump(Duration::from_millis(50)).await;
        assert!(r.fake().ops.contains(&Op::Free(api1)));
        assert!(!r.fake().ops.contains(&Op::Free(web2)), "freed with a flow");
        r.c.set_flows(HashMap::new());
        r.pump(Duration::from_millis(50)).await;
        assert!(r.fake().ops.contains(&Op::Free(web2)));
        // The VIP index is free for a new pool.
        assert!(!r.c.slots.vips.contains_key("api"));
        assert!(r.c.slots.free_vips.contains(&api_index));
    }

    #[tokio::test(start_paused = true)]
    async fn one_probe_lost_across_a_restart_resets_nothing() {
        let mut r = rig();
        r.probes.set("198.18.1.21:8080", false);
        r.pump(Duration::from_millis(300)).await;
        assert_eq!(r.fake().state("spare-1"), BACKEND_DOWN);
        let mut r = restart(r, CONFIG);
        // The first probe after the restart is lost for web-1 (fall = 2),
        // and the first one of the dead spare succeeds (rise = 2).
        r.probes.set("198.18.1.11:8080", false);
        r.probes.set("198.18.1.21:8080", true);
        r.pump(Duration::from_millis(50)).await;
        r.probes.set("198.18.1.11:8080", true);
        r.probes.set("198.18.1.21:8080", false);
        r.pump(Duration::from_millis(300)).await;
        let f = r.fake();
        assert!(
            f.ops.iter().all(|o| !matches!(o, Op::Backend(_))),
            "a restart with one probe lost rewrote a backend: {:?}",
            f.ops
        );
        assert_eq!(f.state("web-1"), BACKEND_ACTIVE);
        assert_eq!(f.state("spare-1"), BACKEND_DOWN);
        assert_eq!(f.ring_members("198.18.2.10:80"), ["web-1", "web-2"]);
        // A backend that really died still goes down after `fall` failures.
        r.probes.set("198.18.1.11:8080", false);
        r.pump(Duration::from_millis(250)).await;
        assert_eq!(r.fake().state("web-1"), BACKEND_DOWN);
    }

    #[tokio::test(start_paused = true)]
    async fn a_count_begun_before_a_slot_retired_does_not_free_it() {
        let mut r = rig();
        r.pump(Duration::from_millis(300)).await;
        let slot = r.c.slots.backends[&key("web", "web-2")];
        let before = Instant::now();
        r.pump(Duration::from_millis(20)).await;
        let removed = CONFIG.replace(
            "  [[pool.backend]]\n  name = \"web-2\"\n  addr = \"198.18.1.12:8080\"\n",
            "",
        );
        r.write_config(removed);
        r.c.reload().unwrap();
        // A walk that started before the reload finishes now, empty.
        r.c.set_flows_since(before, HashMap::new());
        r.pump(Duration::from_millis(50)).await;
        assert!(
            !r.fake().ops.contains(&Op::Free(slot)),
            "freed on a stale count"
        );
        r.c.set_flows(HashMap::new());
        r.pump(Duration::from_millis(20)).await;
        assert!(r.fake().ops.contains(&Op::Free(slot)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_pool_whose_vip_changes_moves_to_the_new_address() {
        let mut r = rig();
        r.pump(Duration::from_millis(300)).await;
        let old: SocketAddrV4 = "198.18.2.10:80".parse().unwrap();
        let moved = CONFIG.replace("198.18.2.10:80", "198.18.2.20:80");
        let mut r = restart(r, &moved);
        assert!(r.fake().ops.contains(&Op::RemoveVip(old)));
        r.pump(Duration::from_millis(300)).await;
        assert!(!r.fake().vips.contains_key(&old));
        assert_eq!(r.fake().ring_members("198.18.2.20:80"), ["web-1", "web-2"]);
        // By reload, too.
        r.write_config(CONFIG);
        r.c.reload().unwrap();
        assert!(!r
            .fake()
            .vips
            .contains_key(&"198.18.2.20:80".parse().unwrap()));
        assert_eq!(r.fake().ring_members("198.18.2.10:80"), ["web-1", "web-2"]);
    }

    #[tokio::test(start_paused = true)]
    async fn on_empty_reaches_the_vip_flags_and_a_reload_republishes_them() {
        let mut r = rig();
        r.pump(Duration::from_millis(300)).await;
        let flags = |ops: &[Op]| -> Vec<u32> {
            ops.iter()
                .filter_map(|o| match o {
                    Op::Publish { flags, .. } => Some(*flags),
                    _ => None,
                })
                .collect()
        };
        let published = flags(&r.fake().ops);
        assert!(!published.is_empty());
        assert!(
            published
                .iter()
                .all(|f| *f == lb_common::VIP_F_REJECT_EMPTY),
            "default on_empty is reject: {published:?}"
        );
        // Same backends, same ring: only the policy changes, and that alone
        // must reach the data plane.
        let before = r.fake().ops.len();
        r.write_config(CONFIG.replace("min_active = 2\n", "min_active = 2\non_empty = \"drop\"\n"));
        let summary = r.c.reload().unwrap();
        assert!(summary.contains("changed pool web"), "{summary}");
        assert_eq!(flags(&r.fake().ops[before..]), [0]);
        assert_eq!(r.c.status().pools[0].on_empty, "drop");
        // And nothing more while it stays so.
        let before = r.fake().ops.len();
        r.pump(Duration::from_millis(300)).await;
        assert!(flags(&r.fake().ops[before..]).is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn run_rewrites_the_host_addresses_on_a_beat() {
        let fake = Fake::default();
        let syncs = Arc::clone(&fake.host_syncs);
        let mut r = rig_with(fake, Arc::new(FakeProbes::default()), CONFIG);
        // `run` consumes the controller: swap a twin into the rig (same
        // config, its own fake) and run the original.
        let twin_cfg = config::load(&r.c.config_path).unwrap();
        let factory: ProbeFactory = Arc::new(|_| Arc::new(FakeProbes::default()) as Arc<dyn Probe>);
        let (twin, twin_inputs) = Controller::new(
            r.c.config_path.clone(),
            twin_cfg,
            Fake::default(),
            factory,
            None,
        )
        .unwrap();
        let c = std::mem::replace(&mut r.c, twin);
        let inputs = std::mem::replace(&mut r.inputs, twin_inputs);
        let (_cmd_tx, cmd_rx) = mpsc::channel(1);
        let (_reload_tx, reload_rx) = mpsc::channel(1);
        let runs = HOST_SYNC_EVERY * 3 + HOST_SYNC_EVERY / 2;
        c.run(inputs, cmd_rx, reload_rx, None, tokio::time::sleep(runs))
            .await
            .unwrap();
        let syncs = syncs.lock().unwrap().clone();
        assert_eq!(syncs.len(), 3, "one every {HOST_SYNC_EVERY:?}: {syncs:?}");
        assert!(syncs.iter().all(|i| i == &["lo".to_string()]), "{syncs:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn reload_refuses_a_bad_config_and_applies_a_good_one() {
        let mut r = rig();
        r.pump(Duration::from_millis(300)).await;
        let ops = r.fake().ops.len();
        r.write_config(CONFIG.replace("rise = 2", "rise = 0"));
        let err = r.c.reload().unwrap_err();
        assert!(err.contains("xdplb.toml:") && err.contains("rise"), "{err}");
        assert_eq!(r.fake().ops.len(), ops, "a refused reload wrote something");
        r.write_config(CONFIG.replace("ring_size = 1009", "ring_size = 1013"));
        let err = r.c.reload().unwrap_err();
        assert!(err.contains("[dataplane]"), "{err}");
        // Remove web-2: it drains, then its slot is freed once idle.
        let removed = CONFIG.replace(
            "  [[pool.backend]]\n  name = \"web-2\"\n  addr = \"198.18.1.12:8080\"\n",
            "",
        );
        r.write_config(removed);
        let slot = r.c.slots.backends[&key("web", "web-2")];
        r.c.set_flows(HashMap::from([(slot, 1)]));
        let summary = r.c.reload().unwrap();
        assert!(summary.contains("removed backend web/web-2"), "{summary}");
        assert_eq!(r.fake().backends[&slot].state, lb_common::BACKEND_DRAINING);
        assert_eq!(
            r.fake().ring_members("198.18.2.10:80"),
            ["spare-1", "web-1"]
        );
        r.c.set_flows(HashMap::new());
        r.pump(Duration::from_millis(50)).await;
        assert!(r.fake().ops.contains(&Op::Free(slot)));
        assert!(r
            .fake()
            .ops
            .contains(&Op::RemoveReply("198.18.1.12:8080".parse().unwrap())));
    }

    #[tokio::test(start_paused = true)]
    async fn new_probe_rules_keep_every_verdict() {
        let mut r = rig();
        r.pump(Duration::from_millis(300)).await;
        let ops = r.fake().ops.len();
        r.write_config(CONFIG.replace("interval_ms = 100", "interval_ms = 150"));
        let summary = r.c.reload().unwrap();
        assert!(summary.contains("changed pool web"), "{summary}");
        r.pump(Duration::from_millis(400)).await;
        let f = r.fake();
        assert!(
            f.ops[ops..]
                .iter()
                .all(|o| !matches!(o, Op::Backend(b) if b.state == BACKEND_DOWN)),
            "a backend went down on a probe-rule change: {:?}",
            &f.ops[ops..]
        );
        assert_eq!(f.state("web-1"), BACKEND_ACTIVE);
    }

    #[tokio::test(start_paused = true)]
    async fn a_readdressed_backend_gets_a_new_slot_and_the_old_one_retires() {
        let mut r = rig();
        r.pump(Duration::from_millis(300)).await;
        let old_slot = r.c.slots.backends[&key("web", "web-1")];
        r.write_config(CONFIG.replace("198.18.1.11:8080", "198.18.1.31:8080"));
        r.c.set_flows(HashMap::from([(old_slot, 2)]));
        let summary = r.c.reload().unwrap();
        assert!(
            summary.contains("re-addressed backend web/web-1"),
            "{summary}"
        );
        let new_slot = r.c.slots.backends[&key("web", "web-1")];
        assert_ne!(new_slot, old_slot);
        assert_eq!(
            r.fake().backends[&old_slot].state,
            lb_common::BACKEND_DRAINING
        );
        r.pump(Duration::from_millis(300)).await;
        let new_meta = &r.fake().backends[&new_slot];
        assert_eq!(new_meta.addr, "198.18.1.31:8080".parse().unwrap());
        assert_eq!(new_meta.state, BACKEND_ACTIVE);
        r.c.set_flows(HashMap::new());
        r.pump(Duration::from_millis(20)).await;
        assert!(r.fake().ops.contains(&Op::Free(old_slot)));
    }

    #[tokio::test(start_paused = true)]
    async fn drains_survive_down_through_the_state_file() {
        let state =
            std::env::temp_dir().join(format!("xdplb-ctl-state-{}/state.json", std::process::id()));
        let text = format!(
            "{CONFIG}\n[control]\nstate_file = \"{}\"\n",
            state.display()
        );
        let mut r = rig_with(Fake::default(), Arc::new(FakeProbes::default()), &text);
        r.pump(Duration::from_millis(300)).await;
        r.c.drain("web", "web-2", true).unwrap();
        let probes = r.probes.clone();
        drop(r);
        // `xdplb down`: the maps, flags and all, are gone.
        let mut r = rig_with(Fake::default(), probes.clone(), &text);
        assert!(r.c.drained.contains(&key("web", "web-2")));
        r.pump(Duration::from_millis(300)).await;
        assert_eq!(r.fake().state("web-2"), lb_common::BACKEND_DRAINING);
        assert_eq!(
            r.fake().ring_members("198.18.2.10:80"),
            ["spare-1", "web-1"]
        );
        // Undrained: saved too.
        r.c.drain("web", "web-2", false).unwrap();
        drop(r);
        let r = rig_with(Fake::default(), probes, &text);
        assert!(r.c.drained.is_empty());
        std::fs::remove_dir_all(state.parent().unwrap()).unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn on_down_keep_lets_a_down_backends_flows_run_out() {
        let keep = CONFIG.replace("min_active = 2\n", "min_active = 2\non_down = \"keep\"\n");
        assert_ne!(keep, CONFIG);
        let mut r = rig_with(Fake::default(), Arc::new(FakeProbes::default()), &keep);
        r.pump(Duration::from_millis(300)).await;
        r.probes.set("198.18.1.11:8080", false);
        r.pump(Duration::from_millis(250)).await;
        let slot = r.c.slots.backends[&key("web", "web-1")];
        // Out of the ring, but DRAINING (flows continue), not DOWN.
        assert_eq!(r.fake().backends[&slot].state, lb_common::BACKEND_DRAINING);
        assert_eq!(
            r.fake().ring_members("198.18.2.10:80"),
            ["spare-1", "web-2"]
        );
        let st = r.c.status();
        let b = &st.pools[0].backends[0];
        assert_eq!((b.health.as_str(), b.state.as_str()), ("down", "down"));
        // A restart remembers it is down, not drained: it needs `rise`
        // successes, and no operator drain appears.
        let mut r = restart(r, &keep);
        assert!(r.c.drained.is_empty());
        r.probes.set("198.18.1.11:8080", true);
        r.pump(Duration::from_millis(50)).await;
        assert_eq!(r.fake().backends[&slot].state, lb_common::BACKEND_DRAINING);
        r.pump(Duration::from_millis(200)).await;
        assert_eq!(r.fake().backends[&slot].state, BACKEND_ACTIVE);
        // The default, reset: DOWN.
        let mut r = rig();
        r.pump(Duration::from_millis(300)).await;
        r.probes.set("198.18.1.11:8080", false);
        r.pump(Duration::from_millis(250)).await;
        assert_eq!(r.fake().state("web-1"), BACKEND_DOWN);
    }

    #[tokio::test(start_paused = true)]
    async fn status_shows_the_smoothed_probe_round_trip() {
        let mut r = rig();
        r.probes
            .set_delay("198.18.1.11:8080", Duration::from_millis(20));
        r.pump(Duration::from_millis(300)).await;
        let rtt = |r: &Rig| r.c.status().pools[0].backends[0].rtt_ms;
        assert_eq!(rtt(&r), Some(20.0));
        assert_eq!(r.c.status().pools[0].backends[1].rtt_ms, Some(0.0));
        // Slower now: it moves a quarter of the way per probe.
        r.probes
            .set_delay("198.18.1.11:8080", Duration::from_millis(40));
        for _ in 0..30 {
            if rtt(&r) != Some(20.0) {
                break;
            }
            r.pump(Duration::from_millis(10)).await;
        }
        assert_eq!(rtt(&r), Some(25.0));
        // A failed probe's time is not a round trip.
        r.probes.set("198.18.1.11:8080", false);
        r.pump(Duration::from_millis(100)).await;
        assert_eq!(rtt(&r), Some(25.0));
    }

    #[tokio::test(start_paused = true)]
    async fn an_agent_that_stops_answering_shows_in_status() {
        use crate::load::{client::LoadReport, parse_agent_reply, LoadError};
        let mut r = rig();
        r.pump(Duration::from_millis(300)).await;
        // A poller for web-1 (the test config polls no agents: none dials).
        let k = key("web", "web-1");
        let id = r.c.task_id(&k);
        let (stop, _stop_rx) = watch::channel(false);
        r.c.pollers.insert(
            k.clone(),
            Task {
                id,
                fingerprint: String::new(),
                stop,
            },
        );
        r.c.runtime.get_mut(&k).unwrap().load = Some(LoadTracker::new(config::Factors::default()));
        let b = |r: &Rig| r.c.status().pools[0].backends[0].clone();
        assert_eq!((b(&r).agent_up, b(&r).agent_error), (None, None));
        r.c.on_load(LoadReport {
            id,
            result: Ok(parse_agent_reply("up 100% cpu=0.5").unwrap()),
        });
        assert_eq!(b(&r).agent_up, Some(true));
        r.c.on_load(LoadReport {
            id,
            result: Err(LoadError::Timeout {
                addr: "198.18.1.11:9777".parse().unwrap(),
                timeout_ms: 500,
            }),
        });
        let st = b(&r);
        assert_eq!(st.agent_up, Some(false));
        assert!(st.agent_error.unwrap().contains("no reply within 500 ms"));
        assert_eq!(st.agent, None);
    }

    /// 64 pools (every VIP index) of 64 backends (every slot).
    /// Pump step for the tests at the limits.
    const COARSE: Duration = Duration::from_millis(50);

    fn full_config() -> String {
        let mut t = String::from("[dataplane]\ninterfaces = [\"lo\"]\nring_size = 6421\n");
        for i in 0..MAX_VIPS {
            t.push_str(&format!(
                "[[pool]]\nname = \"p{i}\"\nvip = \"198.18.2.{}:80\"\n  [pool.health]\n  \
                 interval_ms = 1000\n  timeout_ms = 500\n",
                10 + i
            ));
            for j in 0..MAX_BACKENDS / MAX_VIPS {
                t.push_str(&format!(
                    "  [[pool.backend]]\n  name = \"b{j}\"\n  addr = \"198.19.{i}.{}:8080\"\n",
                    j + 1
                ));
            }
        }
        t
    }

    #[tokio::test(start_paused = true)]
    async fn at_the_limits_a_reload_that_does_not_fit_changes_nothing() {
        let text = full_config();
        let mut r = rig_with(Fake::default(), Arc::new(FakeProbes::default()), &text);
        r.pump_by(Duration::from_millis(100), COARSE).await;
        assert_eq!(r.fake().backends.len(), MAX_BACKENDS as usize);
        assert_eq!(r.fake().vips.len(), MAX_VIPS as usize);
        let ops = r.fake().ops.len();
        let before = r.c.status();
        // Re-addressing needs a new slot while the old one drains: none.
        r.write_config(text.replace("198.19.5.7:8080", "198.19.200.7:8080"));
        let err = r.c.reload().unwrap_err();
        assert!(
            err.contains("1 new backend slots but 0 are free")
                && err.contains("nothing was changed"),
            "{err}"
        );
        assert_eq!(r.fake().ops.len(), ops, "a refused reload wrote");
        assert_eq!(r.c.status(), before);
        // Replacing a pool by one on other servers: its slots are still
        // retiring. Refused whole; done in two steps it works.
        let other = text
            .replace("198.19.63.", "198.19.163.")
            .replace("\"p63\"", "\"q63\"");
        r.write_config(&other);
        let err = r.c.reload().unwrap_err();
        assert!(err.contains("64 still retiring"), "{err}");
        assert_eq!(r.fake().ops.len(), ops);
        let without: String = text
            .split("[[pool]]\nname = \"p63\"")
            .next()
            .unwrap()
            .into();
        r.write_config(&without);
        assert!(r.c.reload().unwrap().contains("removed pool p63"));
        r.c.set_flows(HashMap::new());
        r.pump_by(Duration::from_millis(50), COARSE).await;
        r.write_config(&other);
        r.c.reload().unwrap();
        r.pump_by(Duration::from_millis(100), COARSE).await;
        assert_eq!(r.fake().ring_members("198.18.2.73:80").len(), 64);
        assert_eq!(r.fake().backends.len(), MAX_BACKENDS as usize);
    }

    #[tokio::test(start_paused = true)]
    async fn at_the_limits_a_renamed_pool_takes_its_servers_slots_back() {
        let text = full_config();
        let mut r = rig_with(Fake::default(), Arc::new(FakeProbes::default()), &text);
        r.pump_by(Duration::from_millis(100), COARSE).await;
        // Same servers, new pool name: every key is new, every address is
        // taken back from a slot that would otherwise retire.
        r.write_config(text.replace("\"p0\"", "\"renamed\""));
        let summary = r.c.reload().unwrap();
        assert!(summary.contains("removed pool p0"), "{summary}");
        r.pump_by(Duration::from_millis(100), COARSE).await;
        assert_eq!(r.fake().ring_members("198.18.2.10:80").len(), 64);
        assert_eq!(r.fake().backends.len(), MAX_BACKENDS as usize);
        assert_eq!(r.c.status().pools.len(), MAX_VIPS as usize);
    }

    #[tokio::test(start_paused = true)]
    async fn unknown_drain_targets_are_refused() {
        let mut r = rig();
        r.pump(Duration::from_millis(100)).await;
        assert!(r.c.drain("web", "nope", true).unwrap_err().contains("nope"));
        assert!(r.c.drain("api", "web-1", true).unwrap_err().contains("api"));
    }
}
