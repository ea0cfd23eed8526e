//! VIP indices and backend slots: where each pool and backend lives in the
//! maps. [`Slots::place`] places a config (capacity checked before
//! anything else, a pure function of the running placement and the live
//! image); slots of backends that left retire until their flows end.
use super::*;

/// VIP indices and backend slots: stable for a pool or backend's life,
/// recovered from the pinned maps on restart. Freed slots queue FIFO so a
/// slot is reused as late as possible.
#[derive(Clone, Debug, Default, PartialEq)]
pub(super) struct Slots {
    pub(super) vips: HashMap<String, u32>,
    pub(super) backends: HashMap<Key, u32>,
    pub(super) free_vips: VecDeque<u32>,
    pub(super) free_backends: VecDeque<u32>,
    /// Slots of backends gone from the config (or re-addressed), draining
    /// until their flows end: slot → (since, the address it points at).
    pub(super) retiring: HashMap<u32, (Instant, SocketAddr)>,
}

impl Slots {
    /// The placement the pins hold: each VIP index belongs to the pool
    /// `NAMES` gives it, each slot to its (pool, backend); slots of no
    /// adopted VIP (its pool was removed while the controller was down)
    /// retire from `now`.
    pub(super) fn adopt(live: &Image, now: Instant) -> Slots {
        let mut s = Slots {
            free_vips: (0..MAX_VIPS)
                .filter(|i| !live.vips.contains_key(i))
                .collect(),
            free_backends: (0..MAX_BACKENDS)
                .filter(|i| !live.slots.contains_key(i))
                .collect(),
            ..Slots::default()
        };
        for (&index, vip) in &live.vips {
            s.vips.insert(vip.pool.clone(), index);
        }
        for (&slot, meta) in &live.slots {
            let pool = live.vips.get(&meta.vip_index).map(|v| &v.pool);
            let name = live.names.get(&backend_name_index(slot));
            match (pool, name) {
                (Some(pool), Some(name)) => {
                    s.backends.insert(key(pool, name), slot);
                }
                _ => {
                    s.retiring.insert(slot, (now, meta.addr));
                }
            }
        }
        s
    }

    /// Backends that hold a slot but leave with `new` (gone from it, or
    /// re-addressed: a different server under the same name, whose flows
    /// belong to the old one): (key, slot, the address the slot points at,
    /// if it was ever written).
    fn gone_backends(
        &self,
        live: &Image,
        old: &Config,
        new: &Config,
    ) -> Vec<(Key, u32, Option<SocketAddr>)> {
        let wanted = wanted_backends(new);
        // Where a slot points now: what the data plane holds (adopted or
        // written), else what the old config said.
        let current = |k: &Key, slot: &u32| {
            live.slots
                .get(slot)
                .map(|m| m.addr)
                .or_else(|| old.pool(&k.0).and_then(|p| p.backend(&k.1)).map(|b| b.addr))
        };
        let mut gone: Vec<_> = self
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

    /// Checks that `new` fits the data plane before anything is placed, so
    /// an install or reload is applied whole or not at all. Slots of
    /// backends still retiring (draining their flows) are taken, unless the
    /// new config takes their address back.
    fn check_capacity(
        &self,
        live: &Image,
        old: &Config,
        new: &Config,
    ) -> Result<(), ControllerError> {
        let gone_pools = self.vips.keys().filter(|n| new.pool(n).is_none()).count();
        let new_pools = new
            .pools
            .iter()
            .filter(|p| !self.vips.contains_key(&p.name))
            .count();
        let free_vips = self.free_vips.len() + gone_pools;
        if new_pools > free_vips {
            return Err(ControllerError::NoCapacity {
                what: "VIP indices",
                needed: new_pools,
                free: free_vips,
                retiring: 0,
                max: MAX_VIPS,
            });
        }
        let gone = self.gone_backends(live, old, new);
        let gone_keys: HashSet<&Key> = gone.iter().map(|g| &g.0).collect();
        let new_addrs: HashSet<SocketAddr> = wanted_backends(new).into_values().collect();
        let needed = wanted_backends(new)
            .keys()
            .filter(|k| !self.backends.contains_key(*k) || gone_keys.contains(k))
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
        let free = self.free_backends.len() + unwritten + reused;
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

    /// Where `new` goes, replacing `old` (the running config; empty at
    /// start), given what the maps hold (`live`): pools and backends keep
    /// their indices and slots, new ones take free ones, gone or
    /// re-addressed backends retire from `now`. Returns the placement and
    /// a summary of the change; a config that does not fit is refused
    /// whole. Pure.
    pub(super) fn place(
        &self,
        live: &Image,
        old: &Config,
        new: &Config,
        now: Instant,
    ) -> Result<(Slots, Vec<String>), ControllerError> {
        self.check_capacity(live, old, new)?;
        let mut s = self.clone();
        let mut summary = Vec::new();
        // Pools gone — from the old config, or only from the pins (removed
        // from the file while the controller was down): their VIP entries
        // leave the maps (unless another pool took the address over).
        let mut gone_pools: Vec<String> = old
            .pools
            .iter()
            .map(|p| p.name.clone())
            .chain(s.vips.keys().cloned())
            .filter(|name| new.pool(name).is_none())
            .collect();
        gone_pools.sort();
        gone_pools.dedup();
        for name in gone_pools {
            if let Some(index) = s.vips.remove(&name) {
                s.free_vips.push_back(index);
            }
            if old.pool(&name).is_none() {
                info!(
                    pool = name,
                    "pool is pinned but no longer in the config: removed"
                );
            }
            summary.push(format!("removed pool {name}"));
        }
        // Backends gone (from surviving or removed pools), or re-addressed:
        // their slots retire.
        let wanted = wanted_backends(new);
        for (k, slot, addr) in self.gone_backends(live, old, new) {
            s.backends.remove(&k);
            match addr {
                Some(addr) => {
                    s.retiring.insert(slot, (now, addr));
                }
                // Never written: no flows.
                None => s.free_backends.push_back(slot),
            }
            if wanted.contains_key(&k) {
                summary.push(format!("re-addressed backend {}/{}", k.0, k.1));
            } else if old.pool(&k.0).is_some() && new.pool(&k.0).is_some() {
                summary.push(format!("removed backend {}/{}", k.0, k.1));
            } else if old.pool(&k.0).is_none() {
                info!(
                    pool = k.0,
                    backend = k.1,
                    "backend is pinned but no longer in the config: draining, then retired"
                );
            }
        }
        // An address taken back from a retiring slot: the new backend
        // claims its replies, so the old slot is freed at once, before any
        // slot is handed out (the capacity check counted on it).
        let new_addrs: HashSet<SocketAddr> = wanted.values().copied().collect();
        let mut reused: Vec<u32> = s
            .retiring
            .iter()
            .filter(|(_, (_, addr))| new_addrs.contains(addr))
            .map(|(slot, _)| *slot)
            .collect();
        reused.sort();
        s.release(&reused);
        for pool in &new.pools {
            if !s.vips.contains_key(&pool.name) {
                let i = s
                    .free_vips
                    .pop_front()
                    .ok_or_else(|| ControllerError::NoVipSlot {
                        pool: pool.name.clone(),
                        max: MAX_VIPS,
                    })?;
                s.vips.insert(pool.name.clone(), i);
                if !old.pools.is_empty() {
                    summary.push(format!("added pool {} on {}", pool.name, pool.endpoint()));
                }
            } else if old.pool(&pool.name).is_some_and(|o| o != pool) {
                summary.push(format!("changed pool {}", pool.name));
            }
            let old_pool = old.pool(&pool.name);
            for b in &pool.backends {
                let k = key(&pool.name, &b.name);
                if s.backends.contains_key(&k) {
                    continue;
                }
                let slot =
                    s.free_backends
                        .pop_front()
                        .ok_or_else(|| ControllerError::NoBackendSlot {
                            pool: pool.name.clone(),
                            backend: b.name.clone(),
                            max: MAX_BACKENDS,
                        })?;
                s.backends.insert(k, slot);
                if old_pool.is_some_and(|p| p.backend(&b.name).is_none()) {
                    summary.push(format!("added backend {}/{}", pool.name, b.name));
                }
            }
        }
        Ok((s, summary))
    }

    /// Retiring slots whose time is over at `now`: no established flow in
    /// a count begun after the slot retired (`flows`, begun at
    /// `flows_at`), or retiring longer than [`RETIRE_AFTER`]. Pure.
    pub(super) fn retired(
        &self,
        flows: Option<&HashMap<u32, u64>>,
        flows_at: Instant,
        now: Instant,
    ) -> Vec<u32> {
        let mut done: Vec<u32> = self
            .retiring
            .iter()
            .filter(|(slot, (since, _))| {
                let idle = flows_at >= *since
                    && flows.is_some_and(|f| f.get(slot).copied().unwrap_or(0) == 0);
                idle || now.saturating_duration_since(*since) > RETIRE_AFTER
            })
            .map(|(s, _)| *s)
            .collect();
        done.sort();
        done
    }

    /// Frees retiring slots (their flows are over, or their address was
    /// taken back).
    pub(super) fn release(&mut self, slots: &[u32]) {
        for slot in slots {
            if self.retiring.remove(slot).is_some() {
                self.free_backends.push_back(*slot);
            }
        }
    }
}
