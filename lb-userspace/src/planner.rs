//! The planner: from config and observations to each backend's state and
//! effective weight. Pure: no I/O, no sleeps, the clock is passed in.
//!
//! Each [`Planner::plan`] call is one tick. The planner remembers what it
//! needs between ticks (hold timers of the load watermarks, which spares
//! serve and since when, when each backend became active) so that rules
//! stated over time — "held for `scale_up_after_ms`", slow start, spare
//! drain — are decided here and tested with an injected clock. The caller
//! builds a Maglev table per pool from the `Active` backends' weights and
//! writes the states to the data plane.
//!
//! Rules, in order of precedence for one backend:
//! 1. `Down`: health is not up (or not probed yet, unless in maintenance,
//!    whose checks are stopped), or the agent says `down`/`stopped`/`fail`.
//! 2. `Draining`: a runtime state ([`BackendAdmin`]: maintenance, drain,
//!    by the operator or kept from the agent's `maint`/`drain`), an
//!    operator weight of 0, or an agent weight of `0%` (HAProxy's "no new
//!    connections").
//! 3. Primaries otherwise `Active`. Spares `Active` when needed (below),
//!    else `Draining` right after serving, then `Standby`.
//!
//! Spares needed = the `min_active` gap (`min_active` − active primaries)
//! plus `load_spares`, a count the watermark rules move by one per full hold
//! (up while the pool's mean load stays above `high_watermark`, down while it
//! stays below `low_watermark`). So the low watermark only ever gives back
//! what the high one took: spares filling the `min_active` gap are not
//! removed by it, and a spare added for load still counts as serving when a
//! primary then fails (the gap adds to it rather than reusing it). Spares
//! serve in config order, as a function of what is observed now: the first
//! eligible ones serve, and when fewer are needed the last goes first. So
//! gateways that see the same choose the same spares (and build the same
//! rings) whatever each saw before — a probe blip only one of them saw, a
//! restart. The hysteresis is bounded: a spare displaced by a returning
//! one drains its flows for at most [`SPARE_DRAIN_TIMEOUT_MS`].

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::config::{Config, PoolConfig, Role};
use crate::load::AgentState;
use crate::state::{AdminState, BackendAdmin, SetBy};

/// Effective weights are `config weight × WEIGHT_SCALE × factors`, so a
/// `(1 − load)` factor keeps three digits of resolution after rounding.
pub const WEIGHT_SCALE: u32 = 1000;

/// The headroom factor `(1 − load)` is rounded to multiples of
/// `1 / HEADROOM_STEPS` before it scales a weight. Gateways polling the
/// same agents then build identical rings unless their readings straddle a
/// step boundary — and the xdplb agent publishes its utilisation with
/// hysteresis ([`crate::load::Utilisation::published`]), so in steady
/// state every gateway reads the very same numbers. 20 steps (5% of load)
/// keep load steering meaningful while small drifts move no ring entry.
pub const HEADROOM_STEPS: f64 = 20.0;

/// `(1 − load)` rounded to a multiple of `1 / HEADROOM_STEPS`.
pub fn quantised_headroom(load: f64) -> f64 {
    ((1.0 - load.clamp(0.0, 1.0)) * HEADROOM_STEPS).round() / HEADROOM_STEPS
}

/// Longest a demoted spare stays `Draining` while it still has flows. Long
/// enough for request/response traffic to finish; beyond it, the remaining
/// (long-lived) flows keep going on the `Standby` spare anyway, since the
/// data plane only keeps new flows off it.
pub const SPARE_DRAIN_TIMEOUT_MS: u64 = 60_000;

/// What the controller knows about one backend at a tick.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct BackendObservation {
    /// `None`: not probed yet (treated as down).
    pub health: Option<bool>,
    /// Load score in [0, 1]; `None` when the pool has no `[pool.load]`.
    pub load: Option<f64>,
    pub agent_state: Option<AgentState>,
    pub agent_weight_pct: Option<u8>,
    /// Runtime states: the operator's drain, maintenance and weight
    /// override, and the drain or maintenance the agent asked for (kept
    /// by the controller until the agent says `up` or `ready`).
    pub admin: BackendAdmin,
    /// Flows the data plane holds pinned to this backend; `None` until the
    /// flow table has been counted. Not counted is not zero: a demoted spare
    /// keeps draining until a count says it is idle.
    pub established_flows: Option<u64>,
}

/// Observations keyed by (pool name, backend name). A missing entry is a
/// backend never probed.
pub type Observations = HashMap<(String, String), BackendObservation>;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendState {
    Active,
    Draining,
    Standby,
    Down,
}

impl BackendState {
    pub fn as_str(self) -> &'static str {
        match self {
            BackendState::Active => "active",
            BackendState::Draining => "draining",
            BackendState::Standby => "standby",
            BackendState::Down => "down",
        }
    }

    /// The `BACKEND_*` value the data plane stores.
    pub fn map_value(self) -> u8 {
        match self {
            BackendState::Active => lb_common::BACKEND_ACTIVE,
            BackendState::Draining => lb_common::BACKEND_DRAINING,
            BackendState::Standby => lb_common::BACKEND_STANDBY,
            BackendState::Down => lb_common::BACKEND_DOWN,
        }
    }
}

impl std::fmt::Display for BackendState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a backend is in its state (shown by `status`, asserted by tests).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// A healthy primary.
    Healthy,
    NotProbed,
    HealthDown,
    AgentDown,
    OperatorDrain,
    AgentDrain,
    AgentWeightZero,
    /// `xdplb maint`: no new flows, no health checks.
    Maint,
    /// The agent said `maint`.
    AgentMaint,
    /// `xdplb set weight … 0`.
    WeightZero,
    /// A spare filling the `min_active` gap.
    MinActive,
    /// A spare activated by the high watermark.
    HighLoad,
    /// A spare no longer needed, finishing its flows.
    SpareDraining,
    /// A healthy spare not needed.
    SpareIdle,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Healthy => "healthy",
            Reason::NotProbed => "not_probed",
            Reason::HealthDown => "health_down",
            Reason::AgentDown => "agent_down",
            Reason::OperatorDrain => "operator_drain",
            Reason::AgentDrain => "agent_drain",
            Reason::AgentWeightZero => "agent_weight_zero",
            Reason::Maint => "maint",
            Reason::AgentMaint => "agent_maint",
            Reason::WeightZero => "weight_zero",
            Reason::MinActive => "min_active",
            Reason::HighLoad => "high_load",
            Reason::SpareDraining => "spare_draining",
            Reason::SpareIdle => "spare_idle",
        }
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct BackendPlan {
    pub name: String,
    pub state: BackendState,
    /// Effective Maglev weight; 0 unless `Active`, at least 1 if `Active`.
    pub weight: u32,
    pub reason: Reason,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PoolPlan {
    pub name: String,
    /// In config order.
    pub backends: Vec<BackendPlan>,
    /// Mean load score of the backends that were serving at this tick.
    pub mean_load: Option<f64>,
    /// Spares the watermark rules currently ask for.
    pub load_spares: u32,
}

impl PoolPlan {
    pub fn backend(&self, name: &str) -> Option<&BackendPlan> {
        self.backends.iter().find(|b| b.name == name)
    }

    pub fn active(&self) -> impl Iterator<Item = &BackendPlan> {
        self.backends
            .iter()
            .filter(|b| b.state == BackendState::Active)
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Plan {
    pub pools: Vec<PoolPlan>,
}

impl Plan {
    pub fn pool(&self, name: &str) -> Option<&PoolPlan> {
        self.pools.iter().find(|p| p.name == name)
    }
}

#[derive(Clone, Debug)]
struct BackendMemory {
    state: BackendState,
    /// When it became `Active`, if it is ramping up; `None` at full weight.
    active_since: Option<u64>,
    /// When a spare was demoted and began draining.
    spare_draining_since: Option<u64>,
}

#[derive(Clone, Debug, Default)]
struct PoolMemory {
    above_since: Option<u64>,
    below_since: Option<u64>,
    load_spares: u32,
    backends: HashMap<String, BackendMemory>,
}

/// The planner's memory between ticks. Create one per controller; on reload
/// keep it (pools and backends are matched by name).
#[derive(Clone, Debug, Default)]
pub struct Planner {
    pools: HashMap<String, PoolMemory>,
}

impl Planner {
    pub fn new() -> Self {
        Self::default()
    }

    /// One tick.
    pub fn plan(&mut self, cfg: &Config, obs: &Observations, now_ms: u64) -> Plan {
        let pools = cfg
            .pools
            .iter()
            .map(|pool| {
                // A pool seen for the first time (controller start, or added by
                // reload) starts at full weight: slow start is for backends
                // joining a pool that is already serving.
                let first_tick = !self.pools.contains_key(&pool.name);
                let mem = self.pools.entry(pool.name.clone()).or_default();
                plan_pool(pool, obs, now_ms, mem, first_tick)
            })
            .collect();
        self.pools.retain(|name, _| cfg.pool(name).is_some());
        Plan { pools }
    }

    /// Starts `pool`'s memory from what the pinned data plane shows (a
    /// restart): the backends' `states`, and the spares serving beyond
    /// the `min_active` gap as the watermark count, so a spare serving for
    /// load keeps serving while the load holds, and one that was draining
    /// drains on from `now_ms`. A pool already planned, or with nothing
    /// pinned (its first plan is then its first tick), is left alone.
    pub fn adopt(
        &mut self,
        pool: &PoolConfig,
        states: &HashMap<String, BackendState>,
        now_ms: u64,
    ) {
        if states.is_empty() || self.pools.contains_key(&pool.name) {
            return;
        }
        let serving = |role: Role| {
            pool.backends
                .iter()
                .filter(|b| b.role == role && states.get(&b.name) == Some(&BackendState::Active))
                .count() as u32
        };
        let gap = pool.min_active.saturating_sub(serving(Role::Primary));
        let backends = pool
            .backends
            .iter()
            .filter_map(|b| {
                let state = *states.get(&b.name)?;
                let draining = state == BackendState::Draining && b.role == Role::Spare;
                Some((
                    b.name.clone(),
                    BackendMemory {
                        state,
                        active_since: None,
                        spare_draining_since: draining.then_some(now_ms),
                    },
                ))
            })
            .collect();
        self.pools.insert(
            pool.name.clone(),
            PoolMemory {
                load_spares: if pool.load.is_some() {
                    serving(Role::Spare).saturating_sub(gap)
                } else {
                    0
                },
                backends,
                ..PoolMemory::default()
            },
        );
    }

    /// Whether the next [`plan`](Planner::plan) could differ from the last
    /// one with the same config and observations, only because time passed:
    /// a slow-start ramp under way, a watermark hold running, a demoted
    /// spare draining towards its timeout. When false, the caller need not
    /// plan again until an observation changes (the controller then skips
    /// its beats). Conservative: a hold that could not add a spare anyway
    /// still counts.
    pub fn depends_on_time(&self) -> bool {
        self.pools.values().any(|p| {
            p.above_since.is_some()
                || p.below_since.is_some()
                || p.backends
                    .values()
                    .any(|b| b.active_since.is_some() || b.spare_draining_since.is_some())
        })
    }
}

/// Why a backend cannot serve at all, or cannot take new flows. A backend
/// in maintenance is not probed: never probed, it is not down for that
/// (its established flows continue); down before, it stays down.
fn classify(o: &BackendObservation) -> (Option<Reason>, Option<Reason>) {
    let (admin, by) = o.admin.state();
    let down = match o.health {
        None if admin == AdminState::Maint => None,
        None => Some(Reason::NotProbed),
        Some(false) => Some(Reason::HealthDown),
        Some(true) if o.agent_state.is_some_and(AgentState::is_down) => Some(Reason::AgentDown),
        Some(true) => None,
    };
    let drain = match (admin, by) {
        (AdminState::Maint, Some(SetBy::Agent)) => Some(Reason::AgentMaint),
        (AdminState::Maint, _) => Some(Reason::Maint),
        (AdminState::Drain, Some(SetBy::Agent)) => Some(Reason::AgentDrain),
        (AdminState::Drain, _) => Some(Reason::OperatorDrain),
        (AdminState::Ready, _) if o.admin.weight == Some(0) => Some(Reason::WeightZero),
        (AdminState::Ready, _) if o.agent_weight_pct == Some(0) => Some(Reason::AgentWeightZero),
        (AdminState::Ready, _) => None,
    };
    (down, drain)
}

fn plan_pool(
    pool: &PoolConfig,
    obs: &Observations,
    now: u64,
    mem: &mut PoolMemory,
    first_tick: bool,
) -> PoolPlan {
    let observations: Vec<BackendObservation> = pool
        .backends
        .iter()
        .map(|b| {
            obs.get(&(pool.name.clone(), b.name.clone()))
                .cloned()
                .unwrap_or_default()
        })
        .collect();
    let classes: Vec<_> = observations.iter().map(classify).collect();
    let eligible = |i: usize| classes[i].0.is_none() && classes[i].1.is_none();

    let mut plans: Vec<Option<(BackendState, Reason)>> = vec![None; pool.backends.len()];
    let mut active_primaries = 0u32;
    for (i, b) in pool.backends.iter().enumerate() {
        if b.role != Role::Primary {
            continue;
        }
        plans[i] = Some(match classes[i] {
            (Some(r), _) => (BackendState::Down, r),
            (None, Some(r)) => (BackendState::Draining, r),
            (None, None) => {
                active_primaries += 1;
                (BackendState::Active, Reason::Healthy)
            }
        });
    }

    // Spares serve in config order: which ones is a function of what is
    // observed now (and of the watermark count), never of which served
    // before, so gateways that see the same build the same rings.
    let eligible_spares: Vec<usize> = (0..pool.backends.len())
        .filter(|&i| pool.backends[i].role == Role::Spare && eligible(i))
        .collect();
    let gap = pool.min_active.saturating_sub(active_primaries) as usize;
    let serving_spares: Vec<usize> = eligible_spares
        .iter()
        .copied()
        .take(gap + mem.load_spares as usize)
        .collect();

    // Mean load over what serves: active primaries and the spares the
    // count asked for until now.
    let loads: Vec<f64> = (0..pool.backends.len())
        .filter(|&i| {
            plans[i].is_some_and(|(s, _)| s == BackendState::Active) || serving_spares.contains(&i)
        })
        .filter_map(|i| observations[i].load)
        .collect();
    let mean_load = (!loads.is_empty()).then(|| loads.iter().sum::<f64>() / loads.len() as f64);
    let max_load_spares = eligible_spares.len().saturating_sub(gap) as u32;
    match (&pool.load, mean_load) {
        (Some(lc), Some(mean)) => {
            mem.above_since = if mean > lc.high_watermark {
                mem.above_since.or(Some(now))
            } else {
                None
            };
            mem.below_since = if mean < lc.low_watermark {
                mem.below_since.or(Some(now))
            } else {
                None
            };
            if let Some(t) = mem.above_since {
                // With no standby spare left the timer keeps running, so one
                // that becomes available while load is still high joins at once.
                if now.saturating_sub(t) >= lc.scale_up_after_ms
                    && mem.load_spares < max_load_spares
                {
                    mem.load_spares += 1;
                    mem.above_since = Some(now);
                }
            }
            if let Some(t) = mem.below_since {
                if now.saturating_sub(t) >= lc.scale_down_after_ms && mem.load_spares > 0 {
                    mem.load_spares -= 1;
                    mem.below_since = Some(now);
                }
            }
        }
        (Some(_), None) => {
            mem.above_since = None;
            mem.below_since = None;
        }
        (None, _) => {
            mem.above_since = None;
            mem.below_since = None;
            mem.load_spares = 0;
        }
    }
    // Spares lost to failures are not owed back later without a new hold.
    mem.load_spares = mem.load_spares.min(max_load_spares);

    let wanted = (gap + mem.load_spares as usize).min(eligible_spares.len());
    let chosen: Vec<usize> = eligible_spares.iter().copied().take(wanted).collect();

    for (i, b) in pool.backends.iter().enumerate() {
        if b.role != Role::Spare {
            continue;
        }
        let prev = mem.backends.get(&b.name);
        plans[i] = Some(if let Some(pos) = chosen.iter().position(|&c| c == i) {
            let why = if pos < gap {
                Reason::MinActive
            } else {
                Reason::HighLoad
            };
            (BackendState::Active, why)
        } else {
            match classes[i] {
                (Some(r), _) => (BackendState::Down, r),
                (None, Some(r)) => (BackendState::Draining, r),
                (None, None) => match prev {
                    Some(p) if p.state == BackendState::Active => {
                        (BackendState::Draining, Reason::SpareDraining)
                    }
                    Some(BackendMemory {
                        spare_draining_since: Some(t),
                        ..
                    }) if observations[i].established_flows != Some(0)
                        && now.saturating_sub(*t) < SPARE_DRAIN_TIMEOUT_MS =>
                    {
                        (BackendState::Draining, Reason::SpareDraining)
                    }
                    _ => (BackendState::Standby, Reason::SpareIdle),
                },
            }
        });
    }

    let mut out = Vec::with_capacity(pool.backends.len());
    let mut next_memory = HashMap::with_capacity(pool.backends.len());
    for (i, b) in pool.backends.iter().enumerate() {
        let (state, reason) = plans[i].expect("every backend planned");
        let prev = mem.backends.get(&b.name);
        let active_since = match (state, prev) {
            (BackendState::Active, Some(p)) if p.state == BackendState::Active => p.active_since,
            (BackendState::Active, _) if first_tick => None,
            (BackendState::Active, _) => Some(now),
            _ => None,
        };
        let spare_draining_since = match (reason, prev) {
            (Reason::SpareDraining, Some(p)) if p.state == BackendState::Draining => {
                p.spare_draining_since.or(Some(now))
            }
            (Reason::SpareDraining, _) => Some(now),
            _ => None,
        };
        let weight = if state == BackendState::Active {
            effective_weight(pool, b.weight, &observations[i], active_since, now)
        } else {
            0
        };
        out.push(BackendPlan {
            name: b.name.clone(),
            state,
            weight,
            reason,
        });
        next_memory.insert(
            b.name.clone(),
            BackendMemory {
                state,
                // Once the ramp is over, forget its start.
                active_since: active_since.filter(|t| now.saturating_sub(*t) < pool.ramp_ms()),
                spare_draining_since,
            },
        );
    }
    mem.backends = next_memory;

    PoolPlan {
        name: pool.name.clone(),
        backends: out,
        mean_load,
        load_spares: mem.load_spares,
    }
}

/// `weight × WEIGHT_SCALE × agent% × (1 − load)` (the load factor
/// quantised: [`quantised_headroom`]), ramped by slow start
/// (HAProxy `slowstart`: `ceil(w × elapsed / slow_start)`), never below 1 so
/// an active backend always keeps some share.
fn effective_weight(
    pool: &PoolConfig,
    weight: u32,
    o: &BackendObservation,
    active_since: Option<u64>,
    now: u64,
) -> u32 {
    // An operator's override stands in for the config's weight; the
    // agent's percent and the load apply to it as they would to that.
    let weight = o.admin.weight.unwrap_or(weight);
    let mut w = f64::from(weight) * f64::from(WEIGHT_SCALE);
    if let Some(pct) = o.agent_weight_pct {
        w *= f64::from(pct.min(100)) / 100.0;
    }
    if let Some(load) = o.load {
        w *= quantised_headroom(load);
    }
    let ramp = pool.ramp_ms();
    if let Some(t0) = active_since {
        let elapsed = now.saturating_sub(t0);
        if elapsed < ramp {
            w = (w * elapsed as f64 / ramp as f64).ceil();
        }
    }
    (w.round() as u32).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config;
    use std::path::Path;

    /// Three primaries, two spares; min_active 3; hold 3 s up, 30 s down;
    /// slow start 4 s.
    fn cfg_with(min_active: u32, load: bool) -> Config {
        let load_section = if load {
            "[pool.load]\nhigh_watermark = 0.8\nlow_watermark = 0.3\nscale_up_after_ms = 3000\nscale_down_after_ms = 30000\nslow_start_ms = 4000\n"
        } else {
            ""
        };
        let mut text = format!(
            "[dataplane]\ninterfaces = [\"eth0\"]\n[[pool]]\nname = \"web\"\nvip = \"198.18.2.10:80\"\nmin_active = {min_active}\n{load_section}"
        );
        for (i, (name, role)) in [
            ("p1", "primary"),
            ("p2", "primary"),
            ("p3", "primary"),
            ("s1", "spare"),
            ("s2", "spare"),
        ]
        .iter()
        .enumerate()
        {
            text.push_str(&format!(
                "[[pool.backend]]\nname = \"{name}\"\naddr = \"198.18.1.{}:8080\"\nrole = \"{role}\"\n",
                i + 1
            ));
        }
        config::parse(Path::new("test.toml"), &text).unwrap()
    }

    /// All five healthy with the given load (or none).
    fn healthy(load: Option<f64>) -> Observations {
        ["p1", "p2", "p3", "s1", "s2"]
            .iter()
            .map(|n| {
                (
                    ("web".to_string(), n.to_string()),
                    BackendObservation {
                        health: Some(true),
                        load,
                        ..Default::default()
                    },
                )
            })
            .collect()
    }

    fn set(obs: &mut Observations, name: &str, f: impl FnOnce(&mut BackendObservation)) {
        f(obs.get_mut(&("web".to_string(), name.to_string())).unwrap());
    }

    fn states(plan: &Plan) -> Vec<(&str, BackendState)> {
        plan.pools[0]
            .backends
            .iter()
            .map(|b| (b.name.as_str(), b.state))
            .collect()
    }

    fn state_of(plan: &Plan, name: &str) -> (BackendState, Reason) {
        let b = plan.pools[0].backend(name).unwrap();
        (b.state, b.reason)
    }

    fn weight_of(plan: &Plan, name: &str) -> u32 {
        plan.pools[0].backend(name).unwrap().weight
    }

    use BackendState::{Active, Down, Draining, Standby};

    #[test]
    fn all_healthy_primaries_active_spares_standby() {
        let cfg = cfg_with(3, false);
        let plan = Planner::new().plan(&cfg, &healthy(None), 0);
        assert_eq!(
            states(&plan),
            vec![
                ("p1", Active),
                ("p2", Active),
                ("p3", Active),
                ("s1", Standby),
                ("s2", Standby)
            ]
        );
        for p in ["p1", "p2", "p3"] {
            assert_eq!(weight_of(&plan, p), 100 * WEIGHT_SCALE);
        }
        assert_eq!(weight_of(&plan, "s1"), 0);
        assert_eq!(state_of(&plan, "s1").1, Reason::SpareIdle);
    }

    #[test]
    fn unprobed_and_missing_are_down() {
        let cfg = cfg_with(1, false);
        let mut obs = healthy(None);
        set(&mut obs, "p1", |o| o.health = None);
        obs.remove(&("web".to_string(), "p2".to_string()));
        set(&mut obs, "p3", |o| o.health = Some(false));
        let plan = Planner::new().plan(&cfg, &obs, 0);
        assert_eq!(state_of(&plan, "p1"), (Down, Reason::NotProbed));
        assert_eq!(state_of(&plan, "p2"), (Down, Reason::NotProbed));
        assert_eq!(state_of(&plan, "p3"), (Down, Reason::HealthDown));
        assert_eq!(state_of(&plan, "s1"), (Active, Reason::MinActive));
        assert_eq!(state_of(&plan, "s2").0, Standby);
    }

    #[test]
    fn spare_fills_gap_then_drains_back_to_standby() {
        let cfg = cfg_with(3, false);
        let mut planner = Planner::new();
        let mut obs = healthy(None);
        planner.plan(&cfg, &obs, 0);

        set(&mut obs, "p2", |o| o.health = Some(false));
        let plan = planner.plan(&cfg, &obs, 1000);
        assert_eq!(state_of(&plan, "p2"), (Down, Reason::HealthDown));
        assert_eq!(state_of(&plan, "s1"), (Active, Reason::MinActive));
        assert_eq!(state_of(&plan, "s2"), (Standby, Reason::SpareIdle));

        set(&mut obs, "p2", |o| o.health = Some(true));
        set(&mut obs, "s1", |o| o.established_flows = Some(5));
        let plan = planner.plan(&cfg, &obs, 2000);
        assert_eq!(state_of(&plan, "p2").0, Active);
        assert_eq!(state_of(&plan, "s1"), (Draining, Reason::SpareDraining));
        let plan = planner.plan(&cfg, &obs, 3000);
        assert_eq!(state_of(&plan, "s1"), (Draining, Reason::SpareDraining));

        set(&mut obs, "s1", |o| o.established_flows = Some(0));
        let plan = planner.plan(&cfg, &obs, 4000);
        assert_eq!(state_of(&plan, "s1"), (Standby, Reason::SpareIdle));
    }

    #[test]
    fn a_demoted_spare_is_not_idle_before_its_flows_are_counted() {
        let cfg = cfg_with(3, false);
        let mut planner = Planner::new();
        let mut obs = healthy(None);
        set(&mut obs, "p1", |o| o.health = Some(false));
        planner.plan(&cfg, &obs, 0);
        set(&mut obs, "p1", |o| o.health = Some(true));
        set(&mut obs, "s1", |o| o.established_flows = None);
        for t in [1000, 2000, 30_000] {
            let plan = planner.plan(&cfg, &obs, t);
            assert_eq!(state_of(&plan, "s1"), (Draining, Reason::SpareDraining));
        }
        set(&mut obs, "s1", |o| o.established_flows = Some(0));
        let plan = planner.plan(&cfg, &obs, 31_000);
        assert_eq!(state_of(&plan, "s1"), (Standby, Reason::SpareIdle));
    }

    #[test]
    fn spare_drain_is_bounded() {
        let cfg = cfg_with(3, false);
        let mut planner = Planner::new();
        let mut obs = healthy(None);
        set(&mut obs, "p1", |o| o.health = Some(false));
        planner.plan(&cfg, &obs, 0);
        set(&mut obs, "p1", |o| o.health = Some(true));
        set(&mut obs, "s1", |o| o.established_flows = Some(1));
        let plan = planner.plan(&cfg, &obs, 1000);
        assert_eq!(state_of(&plan, "s1").0, Draining);
        let plan = planner.plan(&cfg, &obs, 1000 + SPARE_DRAIN_TIMEOUT_MS - 1);
        assert_eq!(state_of(&plan, "s1").0, Draining);
        let plan = planner.plan(&cfg, &obs, 1000 + SPARE_DRAIN_TIMEOUT_MS);
        assert_eq!(state_of(&plan, "s1").0, Standby);
    }

    #[test]
    fn a_recovered_spare_takes_its_place_back_in_config_order() {
        let cfg = cfg_with(3, false);
        let mut planner = Planner::new();
        let mut obs = healthy(None);
        set(&mut obs, "s1", |o| o.health = Some(false));
        set(&mut obs, "p1", |o| o.health = Some(false));
        let plan = planner.plan(&cfg, &obs, 0);
        assert_eq!(state_of(&plan, "s2"), (Active, Reason::MinActive));
        set(&mut obs, "s1", |o| o.health = Some(true));
        let plan = planner.plan(&cfg, &obs, 1000);
        // s1 serves again; s2 drains its flows (bounded), then stands by.
        assert_eq!(state_of(&plan, "s1"), (Active, Reason::MinActive));
        assert_eq!(state_of(&plan, "s2"), (Draining, Reason::SpareDraining));
        let plan = planner.plan(&cfg, &obs, 1000 + SPARE_DRAIN_TIMEOUT_MS);
        assert_eq!(state_of(&plan, "s2"), (Standby, Reason::SpareIdle));
    }

    /// Gateways with the same config and the same observations choose the
    /// same spares (so build the same rings), whatever each saw before: a
    /// probe blip only one of them saw, or a restart.
    #[test]
    fn gateways_that_see_the_same_choose_the_same_spares() {
        let cfg = cfg_with(3, false);
        let mut obs = healthy(None);
        set(&mut obs, "p1", |o| {
            o.health = Some(false);
        });
        for o in obs.values_mut() {
            o.established_flows = Some(0);
        }
        // Gateway a saw s1 fail a probe round while p1 was down; b did not.
        let (mut a, mut b) = (Planner::new(), Planner::new());
        let mut blip = obs.clone();
        set(&mut blip, "s1", |o| o.health = Some(false));
        a.plan(&cfg, &blip, 0);
        b.plan(&cfg, &obs, 0);
        let active =
            |p: &Plan| -> Vec<String> { p.pools[0].active().map(|b| b.name.clone()).collect() };
        // Now both see the same, and so does c, a controller just started.
        let (pa, pb) = (a.plan(&cfg, &obs, 1000), b.plan(&cfg, &obs, 1000));
        let pc = Planner::new().plan(&cfg, &obs, 1000);
        assert_eq!(active(&pa), active(&pb), "a and b serve different spares");
        assert_eq!(active(&pa), active(&pc), "a restart re-chooses otherwise");
        // The spare a no longer needs drains (its flows counted, none
        // left), and then a is b.
        let (pa, pb) = (a.plan(&cfg, &obs, 2000), b.plan(&cfg, &obs, 2000));
        assert_eq!(pa, pb);
    }

    #[test]
    fn short_pool_activates_what_there_is() {
        let cfg = cfg_with(5, false);
        let mut obs = healthy(None);
        set(&mut obs, "p1", |o| o.health = Some(false));
        set(&mut obs, "s2", |o| o.health = Some(false));
        let plan = Planner::new().plan(&cfg, &obs, 0);
        assert_eq!(
            states(&plan),
            vec![
                ("p1", Down),
                ("p2", Active),
                ("p3", Active),
                ("s1", Active),
                ("s2", Down)
            ]
        );
    }

    #[test]
    fn operator_drain_wins_except_over_down() {
        let cfg = cfg_with(3, false);
        let mut planner = Planner::new();
        let mut obs = healthy(None);
        set(&mut obs, "p1", |o| o.admin.drain = true);
        for t in [0, 1000, 100_000] {
            let plan = planner.plan(&cfg, &obs, t);
            assert_eq!(state_of(&plan, "p1"), (Draining, Reason::OperatorDrain));
            assert_eq!(weight_of(&plan, "p1"), 0);
            // A drained primary does not count toward min_active.
            assert_eq!(state_of(&plan, "s1"), (Active, Reason::MinActive));
        }
        set(&mut obs, "p1", |o| o.agent_state = Some(AgentState::Up));
        let plan = planner.plan(&cfg, &obs, 200_000);
        assert_eq!(state_of(&plan, "p1").0, Draining);
        set(&mut obs, "p1", |o| o.health = Some(false));
        let plan = planner.plan(&cfg, &obs, 201_000);
        assert_eq!(state_of(&plan, "p1"), (Down, Reason::HealthDown));
        // Operator drain of a spare keeps it out of the gap.
        set(&mut obs, "s1", |o| o.admin.drain = true);
        let plan = planner.plan(&cfg, &obs, 202_000);
        assert_eq!(state_of(&plan, "s1"), (Draining, Reason::OperatorDrain));
        assert_eq!(state_of(&plan, "s2"), (Active, Reason::MinActive));
    }

    #[test]
    fn agent_states() {
        let cfg = cfg_with(1, false);
        let cases = [
            // The agent's drain and maint reach the planner as its kept
            // admin state (see `agent_admin_states`), not its last word.
            (Some(AgentState::Drain), None, Active, Reason::Healthy),
            (Some(AgentState::Down), None, Down, Reason::AgentDown),
            (Some(AgentState::Fail), None, Down, Reason::AgentDown),
            (Some(AgentState::Stopped), None, Down, Reason::AgentDown),
            (
                Some(AgentState::Up),
                Some(0),
                Draining,
                Reason::AgentWeightZero,
            ),
            (Some(AgentState::Ready), None, Active, Reason::Healthy),
            (None, Some(50), Active, Reason::Healthy),
        ];
        for (state, pct, want, why) in cases {
            let mut obs = healthy(None);
            set(&mut obs, "p1", |o| {
                o.agent_state = state;
                o.agent_weight_pct = pct;
            });
            let plan = Planner::new().plan(&cfg, &obs, 0);
            assert_eq!(state_of(&plan, "p1"), (want, why), "{state:?} {pct:?}");
        }
    }

    #[test]
    fn agent_admin_states() {
        let cfg = cfg_with(1, false);
        let cases = [
            (Some(AdminState::Drain), Draining, Reason::AgentDrain),
            (Some(AdminState::Maint), Draining, Reason::AgentMaint),
            (None, Active, Reason::Healthy),
        ];
        for (state, want, why) in cases {
            let mut obs = healthy(None);
            set(&mut obs, "p1", |o| o.admin.agent_state = state);
            let plan = Planner::new().plan(&cfg, &obs, 0);
            assert_eq!(state_of(&plan, "p1"), (want, why), "{state:?}");
        }
    }

    #[test]
    fn operator_runtime_states() {
        let cfg = cfg_with(1, false);
        let plan_with = |f: &dyn Fn(&mut BackendObservation)| {
            let mut obs = healthy(None);
            set(&mut obs, "p1", f);
            Planner::new().plan(&cfg, &obs, 0)
        };
        // Maintenance: no new flows, whatever the agent says.
        let plan = plan_with(&|o| {
            o.admin.maint = true;
            o.admin.agent_state = Some(AdminState::Drain);
        });
        assert_eq!(state_of(&plan, "p1"), (Draining, Reason::Maint));
        // Never probed (its checks stopped), it is in maintenance, not down.
        let plan = plan_with(&|o| {
            o.admin.maint = true;
            o.health = None;
        });
        assert_eq!(state_of(&plan, "p1"), (Draining, Reason::Maint));
        // Down before maintenance, it stays down.
        let plan = plan_with(&|o| {
            o.admin.maint = true;
            o.health = Some(false);
        });
        assert_eq!(state_of(&plan, "p1"), (Down, Reason::HealthDown));
        // Weight 0: no new flows.
        let plan = plan_with(&|o| o.admin.weight = Some(0));
        assert_eq!(state_of(&plan, "p1"), (Draining, Reason::WeightZero));
        // Another weight stands in for the config's (100), the agent's
        // percent applying to it.
        let plan = plan_with(&|o| o.admin.weight = Some(300));
        assert_eq!(weight_of(&plan, "p1"), 300 * WEIGHT_SCALE);
        let plan = plan_with(&|o| {
            o.admin.weight = Some(300);
            o.agent_weight_pct = Some(50);
        });
        assert_eq!(weight_of(&plan, "p1"), 150 * WEIGHT_SCALE);
    }

    #[test]
    fn headroom_is_quantised_to_steps() {
        assert_eq!(quantised_headroom(0.0), 1.0);
        assert_eq!(quantised_headroom(0.2), 0.8);
        assert_eq!(quantised_headroom(0.21), 0.8);
        assert_eq!(quantised_headroom(0.224), 0.8);
        assert_eq!(quantised_headroom(0.226), 0.75);
        assert_eq!(quantised_headroom(1.5), 0.0);
        let cfg = cfg_with(1, true);
        let mut a = healthy(Some(0.0));
        let mut b = healthy(Some(0.0));
        set(&mut a, "p1", |o| o.load = Some(0.41));
        set(&mut b, "p1", |o| o.load = Some(0.42));
        assert_eq!(
            weight_of(&Planner::new().plan(&cfg, &a, 0), "p1"),
            weight_of(&Planner::new().plan(&cfg, &b, 0), "p1"),
            "readings 0.01 apart within one step give one weight"
        );
    }

    #[test]
    fn busier_backend_gets_less() {
        let cfg = cfg_with(1, true);
        let mut obs = healthy(Some(0.0));
        set(&mut obs, "p1", |o| o.load = Some(0.2));
        set(&mut obs, "p2", |o| o.load = Some(0.8));
        set(&mut obs, "p3", |o| {
            o.load = Some(0.2);
            o.agent_weight_pct = Some(50);
        });
        let plan = Planner::new().plan(&cfg, &obs, 0);
        assert_eq!(weight_of(&plan, "p1"), 80_000);
        assert_eq!(weight_of(&plan, "p2"), 20_000);
        assert_eq!(weight_of(&plan, "p3"), 40_000);
        assert!(weight_of(&plan, "p2") < weight_of(&plan, "p1"));

        set(&mut obs, "p2", |o| o.load = Some(1.0));
        let plan = Planner::new().plan(&cfg, &obs, 0);
        assert_eq!(weight_of(&plan, "p2"), 1, "an active backend keeps a share");
    }

    #[test]
    fn high_load_adds_spares_one_hold_at_a_time() {
        let cfg = cfg_with(3, true);
        let mut planner = Planner::new();
        let obs = healthy(Some(0.9));
        let spares = |plan: &Plan| (state_of(plan, "s1"), state_of(plan, "s2"));
        for t in [0, 1000, 2999] {
            let plan = planner.plan(&cfg, &obs, t);
            assert_eq!(spares(&plan).0 .0, Standby, "at {t}");
            assert_eq!(plan.pools[0].load_spares, 0);
        }
        let plan = planner.plan(&cfg, &obs, 3000);
        assert_eq!(spares(&plan).0, (Active, Reason::HighLoad));
        assert_eq!(spares(&plan).1 .0, Standby);
        let plan = planner.plan(&cfg, &obs, 5999);
        assert_eq!(spares(&plan).1 .0, Standby, "the hold restarts");
        let plan = planner.plan(&cfg, &obs, 6000);
        assert_eq!(spares(&plan).1, (Active, Reason::HighLoad));
        // No spare left: nothing more to add.
        let plan = planner.plan(&cfg, &obs, 60_000);
        assert_eq!(plan.pools[0].load_spares, 2);
    }

    #[test]
    fn load_dipping_resets_the_hold() {
        let cfg = cfg_with(3, true);
        let mut planner = Planner::new();
        planner.plan(&cfg, &healthy(Some(0.9)), 0);
        planner.plan(&cfg, &healthy(Some(0.5)), 2000);
        let plan = planner.plan(&cfg, &healthy(Some(0.9)), 3000);
        assert_eq!(state_of(&plan, "s1").0, Standby);
        let plan = planner.plan(&cfg, &healthy(Some(0.9)), 6000);
        assert_eq!(state_of(&plan, "s1").0, Active);
    }

    #[test]
    fn low_load_drains_the_last_load_spare_first() {
        let cfg = cfg_with(3, true);
        let mut planner = Planner::new();
        let high = healthy(Some(0.9));
        planner.plan(&cfg, &high, 0);
        planner.plan(&cfg, &high, 3000);
        let plan = planner.plan(&cfg, &high, 6000);
        assert_eq!(plan.pools[0].active().count(), 5);

        let low = healthy(Some(0.1));
        let plan = planner.plan(&cfg, &low, 7000);
        assert_eq!(plan.pools[0].active().count(), 5);
        let plan = planner.plan(&cfg, &low, 36_999);
        assert_eq!(plan.pools[0].active().count(), 5);
        let plan = planner.plan(&cfg, &low, 37_000);
        assert_eq!(state_of(&plan, "s2"), (Draining, Reason::SpareDraining));
        assert_eq!(state_of(&plan, "s1"), (Active, Reason::HighLoad));
        let plan = planner.plan(&cfg, &low, 66_999);
        assert_eq!(state_of(&plan, "s1").0, Active);
        let plan = planner.plan(&cfg, &low, 67_000);
        assert_eq!(state_of(&plan, "s1").0, Draining);
        assert_eq!(plan.pools[0].load_spares, 0);
    }

    #[test]
    fn low_load_keeps_min_active_spares() {
        let cfg = cfg_with(3, true);
        let mut planner = Planner::new();
        let mut obs = healthy(Some(0.1));
        set(&mut obs, "p1", |o| o.health = Some(false));
        for t in (0..=120_000).step_by(1000) {
            let plan = planner.plan(&cfg, &obs, t);
            assert_eq!(state_of(&plan, "s1"), (Active, Reason::MinActive), "at {t}");
        }
    }

    #[test]
    fn load_spare_adds_to_the_gap() {
        let cfg = cfg_with(3, true);
        let mut planner = Planner::new();
        let mut obs = healthy(Some(0.9));
        planner.plan(&cfg, &obs, 0);
        let plan = planner.plan(&cfg, &obs, 3000);
        assert_eq!(state_of(&plan, "s1"), (Active, Reason::HighLoad));
        set(&mut obs, "p1", |o| o.health = Some(false));
        let plan = planner.plan(&cfg, &obs, 3500);
        assert_eq!(plan.pools[0].active().count(), 4);
        assert_eq!(state_of(&plan, "s1"), (Active, Reason::MinActive));
        assert_eq!(state_of(&plan, "s2"), (Active, Reason::HighLoad));
    }

    #[test]
    fn slow_start_ramp() {
        let cfg = cfg_with(1, true);
        let mut planner = Planner::new();
        let mut obs = healthy(Some(0.0));
        set(&mut obs, "p1", |o| o.health = Some(false));
        let plan = planner.plan(&cfg, &obs, 0);
        // The initial set starts at full weight.
        assert_eq!(weight_of(&plan, "p2"), 100_000);

        set(&mut obs, "p1", |o| o.health = Some(true));
        let t0 = 10_000;
        for (t, want) in [
            (t0, 1),
            (t0 + 1000, 25_000),
            (t0 + 2000, 50_000),
            (t0 + 4000, 100_000),
            (t0 + 9000, 100_000),
        ] {
            let plan = planner.plan(&cfg, &obs, t);
            assert_eq!(weight_of(&plan, "p1"), want, "at {}", t - t0);
            assert_eq!(weight_of(&plan, "p2"), 100_000);
        }
        // Down and back: the ramp starts over.
        set(&mut obs, "p1", |o| o.health = Some(false));
        planner.plan(&cfg, &obs, 20_000);
        set(&mut obs, "p1", |o| o.health = Some(true));
        let plan = planner.plan(&cfg, &obs, 21_000);
        assert_eq!(weight_of(&plan, "p1"), 1);
        let plan = planner.plan(&cfg, &obs, 22_000);
        assert_eq!(weight_of(&plan, "p1"), 25_000);
    }

    #[test]
    fn pool_level_slow_start_ramps_without_agents() {
        let text = cfg_with(1, false);
        let mut cfg = text.clone();
        cfg.pools[0].slow_start_ms = Some(2000);
        let mut planner = Planner::new();
        let mut obs = healthy(None);
        set(&mut obs, "p1", |o| o.health = Some(false));
        planner.plan(&cfg, &obs, 0);
        set(&mut obs, "p1", |o| o.health = Some(true));
        for (t, want) in [(1000, 1), (2000, 50_000), (3000, 100_000)] {
            let plan = planner.plan(&cfg, &obs, t);
            assert_eq!(weight_of(&plan, "p1"), want, "at {t}");
        }
        // Unset without [pool.load]: no ramp (as before).
        let mut planner = Planner::new();
        set(&mut obs, "p1", |o| o.health = Some(false));
        planner.plan(&text, &obs, 0);
        set(&mut obs, "p1", |o| o.health = Some(true));
        assert_eq!(weight_of(&planner.plan(&text, &obs, 1000), "p1"), 100_000);
        // The pool's value wins over [pool.load]'s.
        let mut both = cfg_with(1, true);
        both.pools[0].slow_start_ms = Some(0);
        assert_eq!(both.pools[0].ramp_ms(), 0);
        both.pools[0].slow_start_ms = None;
        assert_eq!(both.pools[0].ramp_ms(), 4000);
    }

    #[test]
    fn slow_start_scales_the_load_adjusted_weight() {
        let cfg = cfg_with(1, true);
        let mut planner = Planner::new();
        let mut obs = healthy(Some(0.5));
        set(&mut obs, "p1", |o| o.admin.drain = true);
        planner.plan(&cfg, &obs, 0);
        set(&mut obs, "p1", |o| o.admin.drain = false);
        planner.plan(&cfg, &obs, 1000);
        let plan = planner.plan(&cfg, &obs, 2000);
        // 100 × 1000 × (1 − 0.5) × 1/4.
        assert_eq!(weight_of(&plan, "p1"), 12_500);
    }

    #[test]
    fn reload_adds_and_removes() {
        let cfg = cfg_with(1, true);
        let mut planner = Planner::new();
        planner.plan(&cfg, &healthy(Some(0.0)), 0);

        // A backend added by reload ramps up; existing ones do not.
        let mut bigger = cfg.clone();
        let mut extra = bigger.pools[0].backends[0].clone();
        extra.name = "p4".into();
        bigger.pools[0].backends.push(extra);
        let mut obs = healthy(Some(0.0));
        obs.insert(
            ("web".into(), "p4".into()),
            BackendObservation {
                health: Some(true),
                load: Some(0.0),
                ..Default::default()
            },
        );
        let plan = planner.plan(&bigger, &obs, 1000);
        assert_eq!(weight_of(&plan, "p4"), 1);
        assert_eq!(weight_of(&plan, "p1"), 100_000);

        // A pool removed and re-added starts afresh at full weight.
        let mut renamed = bigger.clone();
        renamed.pools[0].name = "api".into();
        let obs_api: Observations = obs
            .iter()
            .map(|((_, b), o)| (("api".to_string(), b.clone()), o.clone()))
            .collect();
        let plan = planner.plan(&renamed, &obs_api, 2000);
        assert_eq!(plan.pools[0].name, "api");
        assert_eq!(weight_of(&plan, "p4"), 100_000);
        assert!(!planner.pools.contains_key("web"));
    }

    #[test]
    fn no_load_section_means_plain_weights() {
        let cfg = cfg_with(1, false);
        let plan = Planner::new().plan(&cfg, &healthy(None), 0);
        assert_eq!(plan.pools[0].mean_load, None);
        assert_eq!(weight_of(&plan, "p1"), 100_000);
    }

    /// Plans at `t` and checks what `depends_on_time` promises: when it
    /// says no, planning again later with the same observations (what a
    /// controller that skips its beats leaves undone) gives the same plan.
    fn plan_at(planner: &mut Planner, cfg: &Config, obs: &Observations, t: u64) -> (Plan, bool) {
        let plan = planner.plan(cfg, obs, t);
        let depends = planner.depends_on_time();
        if !depends {
            for later in [t + 1, t + 60_000, t + 3_600_000] {
                let mut p = planner.clone();
                assert_eq!(
                    p.plan(cfg, obs, later),
                    plan,
                    "settled at {t}, not at {later}"
                );
            }
        }
        (plan, depends)
    }

    #[test]
    fn a_steady_pool_does_not_depend_on_time() {
        let mut planner = Planner::new();
        for (cfg, load) in [(cfg_with(3, false), None), (cfg_with(3, true), Some(0.5))] {
            let (_, depends) = plan_at(&mut planner, &cfg, &healthy(load), 0);
            assert!(!depends);
        }
    }

    #[test]
    fn a_slow_start_ramp_depends_on_time_until_it_ends() {
        let mut cfg = cfg_with(1, false);
        cfg.pools[0].slow_start_ms = Some(2000);
        let mut planner = Planner::new();
        let mut obs = healthy(None);
        set(&mut obs, "p1", |o| o.health = Some(false));
        assert!(!plan_at(&mut planner, &cfg, &obs, 0).1);
        set(&mut obs, "p1", |o| o.health = Some(true));
        for (t, want) in [(1000, 1), (1999, 49_950)] {
            let (plan, depends) = plan_at(&mut planner, &cfg, &obs, t);
            assert_eq!(weight_of(&plan, "p1"), want, "at {t}");
            assert!(depends, "ramping at {t}");
        }
        let (plan, depends) = plan_at(&mut planner, &cfg, &obs, 3000);
        assert_eq!(weight_of(&plan, "p1"), 100_000);
        assert!(!depends, "the ramp is over");
    }

    #[test]
    fn watermark_holds_depend_on_time() {
        let cfg = cfg_with(3, true);
        let mut planner = Planner::new();
        // Between the watermarks: no hold runs.
        assert!(!plan_at(&mut planner, &cfg, &healthy(Some(0.5)), 0).1);
        // Above the high one: the scale-up hold runs...
        let (plan, depends) = plan_at(&mut planner, &cfg, &healthy(Some(0.9)), 1000);
        assert!(depends);
        assert_eq!(state_of(&plan, "s1").0, Standby);
        // ... and adds a spare when it ends, which then ramps (4 s).
        let (plan, depends) = plan_at(&mut planner, &cfg, &healthy(Some(0.9)), 4000);
        assert_eq!(state_of(&plan, "s1"), (Active, Reason::HighLoad));
        assert!(depends);
        let (_, depends) = plan_at(&mut planner, &cfg, &healthy(Some(0.5)), 5000);
        assert!(depends, "s1 still ramps");
        let (plan, depends) = plan_at(&mut planner, &cfg, &healthy(Some(0.5)), 8000);
        assert_eq!(weight_of(&plan, "s1"), 50_000);
        assert!(!depends, "ramp over, load between the watermarks");
        // Below the low one: the scale-down hold runs, then the spare drains
        // until its flows are counted out (or its timeout).
        assert!(plan_at(&mut planner, &cfg, &healthy(Some(0.1)), 9000).1);
        let mut low = healthy(Some(0.1));
        set(&mut low, "s1", |o| o.established_flows = Some(2));
        let (plan, depends) = plan_at(&mut planner, &cfg, &low, 39_000);
        assert_eq!(state_of(&plan, "s1"), (Draining, Reason::SpareDraining));
        assert!(depends);
        let mut calm = healthy(Some(0.5));
        set(&mut calm, "s1", |o| o.established_flows = Some(0));
        let (plan, depends) = plan_at(&mut planner, &cfg, &calm, 40_000);
        assert_eq!(state_of(&plan, "s1"), (Standby, Reason::SpareIdle));
        assert!(!depends);
    }

    #[test]
    fn a_draining_spare_depends_on_time_until_its_timeout() {
        let cfg = cfg_with(3, false);
        let mut planner = Planner::new();
        let mut obs = healthy(None);
        set(&mut obs, "p1", |o| o.health = Some(false));
        let (plan, depends) = plan_at(&mut planner, &cfg, &obs, 0);
        assert_eq!(state_of(&plan, "s1"), (Active, Reason::MinActive));
        assert!(!depends, "the initial set starts at full weight");
        set(&mut obs, "p1", |o| o.health = Some(true));
        set(&mut obs, "s1", |o| o.established_flows = Some(5));
        let (plan, depends) = plan_at(&mut planner, &cfg, &obs, 1000);
        assert_eq!(state_of(&plan, "s1").0, Draining);
        assert!(depends);
        let (plan, depends) = plan_at(&mut planner, &cfg, &obs, 1000 + SPARE_DRAIN_TIMEOUT_MS);
        assert_eq!(state_of(&plan, "s1").0, Standby);
        assert!(!depends);
    }

    #[test]
    fn states_serialise_lowercase() {
        assert_eq!(serde_json::to_string(&Draining).unwrap(), "\"draining\"");
        assert_eq!(
            serde_json::to_string(&Reason::MinActive).unwrap(),
            "\"min_active\""
        );
        assert_eq!(Active.map_value(), lb_common::BACKEND_ACTIVE);
        assert_eq!(Standby.as_str(), "standby");
        assert_eq!(Reason::SpareIdle.as_str(), "spare_idle");
    }
}
