//! VIP indices and backend slots: capacity planned before any write,
//! assignment on install and reload, retirement and freeing.
use super::*;

/// VIP indices and backend slots: stable for a pool or backend's life,
/// recovered from the pinned maps on restart. Freed slots queue FIFO so a
/// slot is reused as late as possible.
#[derive(Default)]
pub(super) struct Slots {
    pub(super) vips: HashMap<String, u32>,
    pub(super) backends: HashMap<Key, u32>,
    pub(super) free_vips: VecDeque<u32>,
    pub(super) free_backends: VecDeque<u32>,
}

impl Slots {
    pub(super) fn new(taken_vips: &HashSet<u32>, taken_backends: &HashSet<u32>) -> Slots {
        Slots {
            free_vips: (0..MAX_VIPS).filter(|i| !taken_vips.contains(i)).collect(),
            free_backends: (0..MAX_BACKENDS)
                .filter(|i| !taken_backends.contains(i))
                .collect(),
            ..Default::default()
        }
    }
}

impl<D: DataplaneOps> Controller<D> {
    /// Backends that hold a slot but leave with `new` (gone from it, or
    /// re-addressed: a different server under the same name, whose flows
    /// belong to the old one): (key, slot, the address the slot points at,
    /// if it was ever written).
    pub(super) fn gone_backends(
        &self,
        old: &Config,
        new: &Config,
    ) -> Vec<(Key, u32, Option<SocketAddr>)> {
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
    pub(super) fn plan_capacity(&self, new: &Config) -> Result<(), ControllerError> {
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
        let new_addrs: HashSet<SocketAddr> = wanted_backends(new).into_values().collect();
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
    pub(super) fn install(&mut self, config: Config) -> Result<Vec<String>, ControllerError> {
        self.plan_capacity(&config)?;
        self.dirty = true;
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
                .or_else(|| old.pool(&name).map(|p| p.endpoint()));
            // A VIP taken over by another pool stays in the map until that
            // pool's ring replaces the entry (no gap in service).
            if let Some(addr) =
                addr.filter(|a| self.config.pools.iter().all(|p| p.endpoint() != *a))
            {
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
        // A pool whose VIP changed (address, port or protocol): the old
        // one stops being balanced; the new one is published on the next
        // sync.
        let moved: Vec<(String, Endpoint)> = self
            .vip_addrs
            .iter()
            .filter(|(name, addr)| {
                self.config
                    .pool(name)
                    .is_some_and(|p| p.endpoint() != **addr)
            })
            .map(|(n, a)| (n.clone(), *a))
            .collect();
        for (name, addr) in moved {
            if self.config.pools.iter().all(|p| p.endpoint() != addr) {
                self.dp.remove_vip(addr)?;
            }
            // Its backends' replies were keyed with the old protocol.
            let pool = self
                .config
                .pool(&name)
                .expect("moved pools are in the config");
            if pool.protocol != addr.protocol {
                for b in &pool.backends {
                    let old = Endpoint {
                        addr: b.addr,
                        protocol: addr.protocol,
                    };
                    if !self.claims_reply(old) {
                        self.dp.remove_reply(old)?;
                    }
                }
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
        let new_addrs: HashSet<SocketAddr> = wanted.values().copied().collect();
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
                summary.push(format!("added pool {} on {}", pool.name, pool.endpoint()));
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

    pub(super) fn install_backend(
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
        let reply = pool.backend_endpoint(b);
        if pool.mode == config::Mode::Nat {
            self.dp.write_reply(reply, pool.vip, slot, vip_index)?;
        } else {
            // Direct return: the backend answers from the VIP itself, and
            // nothing from its own address is ours to rewrite.
            self.dp.remove_reply(reply)?;
        }
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
        Ok(())
    }

    /// Whether a backend of the running config has its replies keyed by
    /// `e` (its address and its pool's protocol).
    pub(super) fn claims_reply(&self, e: Endpoint) -> bool {
        self.config
            .pools
            .iter()
            .filter(|p| p.protocol == e.protocol)
            .any(|p| p.backends.iter().any(|b| b.addr == e.addr))
    }

    pub(super) fn free_slot(&mut self, slot: u32) -> Result<(), ControllerError> {
        if let Some((_, addr)) = self.retiring.remove(&slot) {
            // A slot does not record its pool's protocol (a pool removed
            // while the controller was down is known only by its slots):
            // the address's reply entries of either protocol go, unless a
            // live backend took them.
            for protocol in [Protocol::Tcp, Protocol::Udp] {
                let e = Endpoint { addr, protocol };
                if !self.claims_reply(e) {
                    self.dp.remove_reply(e)?;
                }
            }
        }
        self.dp.free_backend(slot)?;
        self.written.remove(&slot);
        self.slots.free_backends.push_back(slot);
        Ok(())
    }
}
