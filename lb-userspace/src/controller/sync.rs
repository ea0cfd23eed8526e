//! One sync: observations → plan → target image → apply → commit, and
//! what each backend's slot is written as.
use super::*;

/// The `VipMeta::flags` a pool's config asks for.
pub fn vip_flags(pool: &PoolConfig) -> u32 {
    let empty = match pool.on_empty {
        OnEmpty::Reject => lb_common::VIP_F_REJECT_EMPTY,
        OnEmpty::Drop => 0,
    };
    let mode = match pool.mode {
        config::Mode::Nat => 0,
        config::Mode::Dsr => lb_common::VIP_F_DSR,
        config::Mode::Tunnel => lb_common::VIP_F_TUNNEL,
    };
    empty | mode
}

/// Backend `i` of a pool's plan, which is in config order (a name lookup,
/// linear, would make every sync quadratic in the pool's size).
pub(super) fn plan_of<'a>(pp: &'a PoolPlan, i: usize, name: &str) -> Option<&'a BackendPlan> {
    pp.backends
        .get(i)
        .filter(|b| b.name == name)
        .or_else(|| pp.backend(name))
}

/// `BackendMeta::flags` bit: health says down, in an `on_down = "keep"`
/// pool, whose slot is written `DRAINING` so its flows run out instead of
/// being re-steered. The data plane ignores flags; the bit lets a restarted
/// controller tell this from a drain and seed the verdict. (User space
/// only; it belongs beside `BACKEND_F_OPERATOR_DRAIN` in lb-common once
/// the data-plane rewrite there lands.)
pub(crate) const BACKEND_F_HEALTH_DOWN: u8 = 2;

const _: () = assert!(BACKEND_F_HEALTH_DOWN & BACKEND_F_OPERATOR_DRAIN == 0);

/// The map state of a backend the planner put in `state`. A down backend
/// of an `on_down = "keep"` pool is `DRAINING` in the map: out of the ring,
/// its established flows left to run out (`DOWN` would re-steer them).
pub(super) fn slot_state(on_down: OnDown, state: BackendState) -> u8 {
    match (state, on_down) {
        (BackendState::Down, OnDown::Keep) => BACKEND_DRAINING,
        (s, _) => s.map_value(),
    }
}

pub(super) fn slot_flags(on_down: OnDown, state: BackendState, drained: bool) -> u8 {
    let mut f = 0;
    if drained {
        f |= BACKEND_F_OPERATOR_DRAIN;
    }
    if state == BackendState::Down && on_down == OnDown::Keep {
        f |= BACKEND_F_HEALTH_DOWN;
    }
    f
}

impl<D: DataplaneOps> Controller<D> {
    /// What the planner is told about each backend of `config` placed by
    /// `slots`. A backend's runtime counts only while it is the same
    /// server (a re-addressed backend starts unprobed).
    pub(super) fn observations(&self, config: &Config, slots: &Slots) -> Observations {
        let now = self.now_ms();
        let mut obs = Observations::new();
        for pool in &config.pools {
            for b in &pool.backends {
                let k = key(&pool.name, &b.name);
                let rt = self.runtime.get(&k).filter(|r| r.addr == Some(b.addr));
                let tracker = rt.and_then(|r| r.load.as_ref());
                let interval = pool.load.as_ref().map_or(1000, |l| l.interval_ms);
                let slot = slots.backends.get(&k);
                obs.insert(
                    k.clone(),
                    BackendObservation {
                        health: rt.and_then(|r| r.health.as_ref()).and_then(|h| h.up),
                        load: tracker.map(|t| t.score(now, interval)),
                        agent_state: tracker.and_then(|t| t.state(now, interval)),
                        agent_weight_pct: tracker.and_then(|t| t.weight_pct(now, interval)),
                        admin: self.admin.get(&k).cloned().unwrap_or_default(),
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

    /// Whether every backend has had its first probe, and every agent its
    /// first answer (or failure).
    pub(super) fn all_probed(&self) -> bool {
        // A backend in maintenance is not probed.
        self.runtime.iter().all(|(k, r)| {
            (r.probed || self.in_maint(k)) && (r.load.is_none() || r.agent_up.is_some())
        })
    }

    /// Whether a beat must plan: an observation changed, or the plan may
    /// move with the clock alone (the planner's ramps, holds and spare
    /// drains; agent scores, which age; retiring slots, which time out;
    /// the first sync, which waits for probes or a deadline; an empty
    /// pool's announcement hold). Otherwise a
    /// plan would repeat the last one and write nothing.
    pub(super) fn needs_sync(&self) -> bool {
        self.dirty
            || !self.ready
            || self.planner.depends_on_time()
            || !self.slots.retiring.is_empty()
            || self.runtime.values().any(|r| r.load.is_some())
            || self.drain_hold_running()
    }

    /// Whether an empty pool's announcement may end with the clock alone
    /// (its [`DRAIN_ANNOUNCE_HOLD`] running out).
    fn drain_hold_running(&self) -> bool {
        self.config.announce.is_some()
            && self
                .emptied
                .values()
                .any(|since| since.elapsed() <= DRAIN_ANNOUNCE_HOLD)
    }

    /// One beat of the loop: a sync when [`needs_sync`](Self::needs_sync)
    /// says so; otherwise only the metrics' status, kept at most
    /// `STATUS_EVERY` old (round trips move without the plan moving).
    pub fn beat(&mut self) -> Result<(), ControllerError> {
        if self.needs_sync() {
            return self.sync();
        }
        self.push_status(false);
        Ok(())
    }

    /// Plans and writes the difference into the data plane.
    pub fn sync(&mut self) -> Result<(), ControllerError> {
        let r = self.converge(None);
        // A failed write is retried on the next beat, which must not skip.
        self.dirty = r.is_err();
        r
    }

    /// Sends the status to the metrics when the plan `changed`, or when
    /// the last copy is `STATUS_EVERY` old.
    fn push_status(&mut self, changed: bool) {
        if let Some(m) = &self.metrics {
            if changed || self.status_pushed.elapsed() >= STATUS_EVERY {
                m.set_status(&self.status());
                self.status_pushed = Instant::now();
            }
        }
    }

    /// Whether the first plan may be written: every backend probed, or
    /// the deadline passed. Until then the pinned data plane keeps
    /// forwarding as it was (see [`reconcile::target`]).
    fn take_over(&mut self) -> bool {
        if !self.ready {
            if !self.all_probed() && Instant::now() < self.ready_deadline {
                return false;
            }
            self.ready = true;
            info!("first probes in; taking over the data plane");
            // The planner starts from what the pins show, not from nothing.
            let now = self.now_ms();
            for pool in &self.config.pools {
                let states = pool
                    .backends
                    .iter()
                    .filter_map(|b| {
                        let s = self.pinned.get(&key(&pool.name, &b.name))?;
                        Some((b.name.clone(), *s))
                    })
                    .collect();
                self.planner.adopt(pool, &states, now);
            }
        }
        true
    }

    /// Makes the data plane hold what `next` (a config and its placement;
    /// the running ones when `None`) and the observations call for, then
    /// commits the planner's memory, the freed slots and the plan. Nothing
    /// but the maps (and the live image, which follows them) changes when
    /// a write fails; the caller commits `next` only on success.
    pub(super) fn converge(
        &mut self,
        next: Option<(&Config, &Slots)>,
    ) -> Result<(), ControllerError> {
        let ready = self.take_over();
        if ready {
            self.check_links();
        }
        let (config, slots) = next.unwrap_or((&self.config, &self.slots));
        if !ready {
            let held = reconcile::target(&World {
                config,
                slots,
                plan: None,
                admin: &self.admin,
                live: &self.out.live,
                freed: &[],
                attached: true,
                flows: None,
                drain_held: &HashSet::new(),
            });
            self.out.write(&held)?;
            return Ok(());
        }
        let obs = self.observations(config, slots);
        let mut planner = self.planner.clone();
        let plan = planner.plan(config, &obs, self.now_ms());
        let freed = slots.retired(self.flows.as_ref(), self.flows_at, Instant::now());
        let attached = config.announce.is_none() || self.detached.is_empty();
        let now = Instant::now();
        let drain_held: HashSet<String> = config
            .pools
            .iter()
            .filter(|p| {
                self.emptied
                    .get(&p.name)
                    .is_none_or(|since| now.saturating_duration_since(*since) < DRAIN_ANNOUNCE_HOLD)
            })
            .map(|p| p.name.clone())
            .collect();
        let target = reconcile::target(&World {
            config,
            slots,
            plan: Some(&plan),
            admin: &self.admin,
            live: &self.out.live,
            freed: &freed,
            attached,
            flows: self.flows.as_ref(),
            drain_held: &drain_held,
        });
        self.out.apply(&target, config.announce.as_ref())?;
        // When each pool's ring emptied (the drain hold counts from then).
        for pool in &config.pools {
            let serves = slots
                .vips
                .get(&pool.name)
                .and_then(|i| target.vips.get(i))
                .is_some_and(VipImage::serves);
            if serves {
                self.emptied.remove(&pool.name);
            } else {
                self.emptied.entry(pool.name.clone()).or_insert(now);
            }
        }
        self.emptied.retain(|name, _| config.pool(name).is_some());
        self.planner = planner;
        if next.is_none() {
            self.slots.release(&freed);
        }
        // The metrics' copy of the status: at once when the plan changed,
        // else once a second (rtt, load and flow counts move slowly), so a
        // large pool does not rebuild it on every beat.
        let changed = self.plan.as_ref() != Some(&plan);
        if changed {
            record_transitions(
                config,
                self.plan.as_ref(),
                &self.pinned,
                &plan,
                &mut self.runtime,
            );
        }
        self.plan = Some(plan);
        if next.is_none() {
            self.push_status(changed);
        }
        Ok(())
    }
}

/// Notes every backend whose state `plan` changes from the one status
/// shows now (the last plan written) or, before the first, from the one
/// the pins held at start. Here, where the plan status reads is replaced,
/// each change is seen exactly once; a backend neither names counts as
/// "down", as status shows it.
fn record_transitions(
    config: &Config,
    last: Option<&Plan>,
    pinned: &HashMap<Key, BackendState>,
    plan: &Plan,
    runtime: &mut HashMap<Key, Runtime>,
) {
    let at_unix_ms = crate::status::now_unix_ms();
    for pool in &config.pools {
        let Some(pp) = plan.pool(&pool.name) else {
            continue;
        };
        let old = last.and_then(|p| p.pool(&pool.name));
        for (i, b) in pool.backends.iter().enumerate() {
            let Some(bp) = plan_of(pp, i, &b.name) else {
                continue;
            };
            let was = match old {
                Some(o) => plan_of(o, i, &b.name).map(|p| p.state),
                None => pinned.get(&key(&pool.name, &b.name)).copied(),
            }
            .unwrap_or(BackendState::Down);
            if was == bp.state {
                continue;
            }
            let Some(rt) = runtime.get_mut(&key(&pool.name, &b.name)) else {
                continue;
            };
            let mut reason = bp.reason.as_str().to_string();
            if bp.reason == Reason::HealthDown {
                if let Some(e) = &rt.last_error {
                    reason = format!("{reason}: {e}");
                }
            }
            // The planner ramps a backend joining a pool it already
            // planned (not one seen for the first time).
            if bp.state == BackendState::Active && old.is_some() && pool.ramp_ms() > 0 {
                reason = format!("{reason}; slow start over {} ms", pool.ramp_ms());
            }
            info!(
                pool = pool.name,
                backend = b.name,
                from = was.as_str(),
                to = bp.state.as_str(),
                reason,
                "backend state changed"
            );
            rt.transitions.record(Transition {
                at_unix_ms,
                from: was,
                to: bp.state,
                reason,
            });
        }
    }
}
