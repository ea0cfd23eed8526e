//! The ordered map sync: slots that are not down, then rings, then down
//! slots (see the module doc of `controller`), and what each is written as.
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

/// What a pool's VIP was last published with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct PublishedRing {
    pub(super) flags: u32,
    pub(super) flow_idle_ms: u32,
    /// Maglev inputs: (slot, weight) of every active backend.
    pub(super) inputs: Vec<(u32, u32)>,
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
pub(super) const BACKEND_F_HEALTH_DOWN: u8 = 2;

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
    pub(super) fn observations(&self) -> Observations {
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

    pub(super) fn all_probed(&self) -> bool {
        self.runtime.values().all(|r| r.probed)
    }

    /// Whether a beat must plan: an observation changed, or the plan may
    /// move with the clock alone (the planner's ramps, holds and spare
    /// drains; agent scores, which age; retiring slots, which time out;
    /// the first sync, which waits for probes or a deadline). Otherwise a
    /// plan would repeat the last one and write nothing.
    pub(super) fn needs_sync(&self) -> bool {
        self.dirty
            || !self.ready
            || self.planner.depends_on_time()
            || !self.retiring.is_empty()
            || self.runtime.values().any(|r| r.load.is_some())
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
        let r = self.plan_and_write();
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

    fn plan_and_write(&mut self) -> Result<(), ControllerError> {
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
            for (i, b) in pool.backends.iter().enumerate() {
                let k = key(&pool.name, &b.name);
                let (Some(&slot), Some(bp)) =
                    (self.slots.backends.get(&k), plan_of(pp, i, &b.name))
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
                flow_idle_ms: pool.flow_idle_ms,
                inputs,
            };
            if self.published.get(&pool.name) != Some(&published) {
                rings.push((pool.name.clone(), pool.endpoint(), vip_index, published));
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
            self.dp.publish_vip(
                vip,
                vip_index,
                &ring,
                published.flags,
                published.flow_idle_ms,
            )?;
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
        // [announce]: a VIP is announced while its ring has an active
        // backend and the program still forwards (`xdplb down --force`
        // can detach it under us; announcing then would draw traffic to a
        // gateway that passes it to its kernel).
        let attached = self.config.announce.is_none() || self.dp.attached();
        if !attached && !self.detached_seen {
            warn!("the data plane was detached under the controller: VIPs withdrawn");
        }
        self.detached_seen = !attached;
        let wanted = self
            .config
            .pools
            .iter()
            .filter(|p| {
                attached
                    && self
                        .published
                        .get(&p.name)
                        .is_some_and(|r| !r.inputs.is_empty())
            })
            .map(|p| (p.name.clone(), p.vip.ip()))
            .collect();
        crate::announce::Announcer::sync(
            &mut self.announcer,
            self.config.announce.as_ref(),
            wanted,
        );
        // The metrics' copy of the status: at once when the plan changed,
        // else once a second (rtt, load and flow counts move slowly), so a
        // large pool does not rebuild it on every beat.
        let changed = self.plan.as_ref() != Some(&plan);
        if changed {
            self.record_transitions(&plan);
        }
        self.plan = Some(plan);
        self.push_status(changed);
        Ok(())
    }

    /// Notes every backend whose state `plan` changes from the one status
    /// shows now (the last plan written). Here, where the plan status
    /// reads is replaced, each change is seen exactly once; a backend no
    /// plan named yet counts as "down", as status shows it.
    fn record_transitions(&mut self, plan: &Plan) {
        let at_unix_ms = crate::status::now_unix_ms();
        for pool in &self.config.pools {
            let Some(pp) = plan.pool(&pool.name) else {
                continue;
            };
            let old = self.plan.as_ref().and_then(|p| p.pool(&pool.name));
            for (i, b) in pool.backends.iter().enumerate() {
                let Some(bp) = plan_of(pp, i, &b.name) else {
                    continue;
                };
                let was = old
                    .and_then(|o| plan_of(o, i, &b.name))
                    .map_or(BackendState::Down, |p| p.state);
                if was == bp.state {
                    continue;
                }
                let Some(rt) = self.runtime.get_mut(&key(&pool.name, &b.name)) else {
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
                    from: was.as_str().to_string(),
                    to: bp.state.as_str().to_string(),
                    reason,
                });
            }
        }
    }
}
