//! `xdplb plan` and `xdplb drain … --dry-run`: what a reload of another
//! config, or a drain, would do — the same placement, planner and
//! reconciler a reload runs, on copies, and the target image compared with
//! the live one instead of written. Nothing here writes or commits.
use super::*;
use crate::{
    command::Proposal,
    status::{BackendChange, ChangePlan, PoolChange, Reweight},
};

/// Ring entries per slot.
fn entries_per_slot(ring: &[u32]) -> HashMap<u32, i64> {
    let mut n = HashMap::new();
    for s in ring.iter().filter(|s| **s != lb_common::NO_BACKEND) {
        *n.entry(*s).or_insert(0) += 1;
    }
    n
}

/// The ring a VIP image stands for (`None`: its inputs are not known).
fn ring_of(vip: Option<&VipImage>, ring_size: u32) -> Option<Vec<u32>> {
    let members = vip?.ring.as_ref()?;
    let entries: Vec<MaglevEntry> = members
        .iter()
        .map(|m| MaglevEntry {
            id: m.slot,
            key: &m.name,
            weight: m.weight,
        })
        .collect();
    Some(maglev::build(&entries, ring_size))
}

impl<D: DataplaneOps> Controller<D> {
    /// What `proposal` would do. A refusal is in the plan (`accepted:
    /// false`, `refused` in the words `xdplb reload` or `xdplb drain`
    /// would use).
    pub fn plan_change(&self, proposal: &Proposal) -> ChangePlan {
        let refused = |reason: String| ChangePlan {
            accepted: false,
            refused: Some(reason),
            ..ChangePlan::default()
        };
        let mut admin = self.admin.clone();
        let mut summary = Vec::new();
        let new = match proposal {
            Proposal::Config { path } => {
                let read = std::fs::read_to_string(path)
                    .map_err(|e| format!("{}: {e}", path.display()))
                    .and_then(|text| self.reloadable(path, &text));
                match read {
                    Ok(c) => c,
                    Err(e) => return refused(e),
                }
            }
            Proposal::Drain { pool, backend } => {
                match self.config.pool(pool) {
                    None => return refused(format!("unknown pool {pool:?}")),
                    Some(p) if p.backend(backend).is_none() => {
                        return refused(format!("unknown backend {backend:?} in pool {pool:?}"))
                    }
                    Some(_) => {}
                }
                admin.entry(key(pool, backend)).or_default().drain = true;
                summary.push(format!("drain {pool}/{backend}"));
                self.config.clone()
            }
        };
        let now = Instant::now();
        let (slots, placed) = match self.slots.place(&self.out.live, &self.config, &new, now) {
            Ok(p) => p,
            Err(e) => return refused(e.to_string()),
        };
        summary.extend(placed);
        let mut assumptions = Vec::new();
        let mut obs = self.observations(&new, &slots);
        let mut unprobed: Vec<String> = Vec::new();
        for (k, o) in obs.iter_mut() {
            o.admin = admin.get(k).cloned().unwrap_or_default();
            // A backend not probed yet (new, or re-addressed) is planned
            // as it will be once its checks pass: the plan shows where the
            // change leads, not the moment before the first probe.
            if o.health.is_none() && o.admin.state().0 != AdminState::Maint {
                o.health = Some(true);
                unprobed.push(format!("{}/{}", k.0, k.1));
            }
        }
        unprobed.sort();
        if !unprobed.is_empty() {
            assumptions.push(format!(
                "not probed yet, taken as passing their health checks: {}",
                unprobed.join(", ")
            ));
        }
        let mut planner = self.planner.clone();
        let at = self.now_ms();
        let mut plan = planner.plan(&new, &obs, at);
        let ramp = new.pools.iter().map(|p| p.ramp_ms()).max().unwrap_or(0);
        if ramp > 0 {
            // Where slow start ends (its weights are the ring's for good).
            plan = planner.plan(&new, &obs, at + ramp);
            assumptions.push(format!("weights once slow start ({ramp} ms) is over"));
        }
        let attached = new.announce.is_none() || self.detached.is_empty();
        let drain_held: HashSet<String> = new
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
            config: &new,
            slots: &slots,
            plan: Some(&plan),
            admin: &admin,
            live: &self.out.live,
            freed: &[],
            attached,
            flows: self.flows.as_ref(),
            drain_held: &drain_held,
        });
        let mut names: Vec<&str> = self.config.pools.iter().map(|p| p.name.as_str()).collect();
        for p in &new.pools {
            if !names.contains(&p.name.as_str()) {
                names.push(&p.name);
            }
        }
        let pools = names
            .into_iter()
            .map(|name| self.pool_change(name, &new, &slots, &plan, &target))
            .collect();
        ChangePlan {
            accepted: true,
            refused: None,
            summary,
            pools,
            assumptions,
            census_age_ms: self
                .flows
                .as_ref()
                .map(|_| self.flows_at.elapsed().as_millis() as u64),
        }
    }

    fn pool_change(
        &self,
        name: &str,
        new: &Config,
        slots: &Slots,
        plan: &Plan,
        target: &Image,
    ) -> PoolChange {
        let ring_size = self.config.dataplane.ring_size;
        let old_pool = self.config.pool(name);
        let new_pool = new.pool(name);
        let old_vip = self
            .slots
            .vips
            .get(name)
            .and_then(|i| self.out.live.vips.get(i));
        let new_vip = slots.vips.get(name).and_then(|i| target.vips.get(i));
        let change = match (old_pool, new_pool) {
            (None, Some(_)) => "added",
            (Some(_), None) => "removed",
            (Some(o), Some(n)) if o != n => "changed",
            _ => "unchanged",
        };
        let vip_change = match (old_pool, new_pool) {
            (Some(_), None) => Some("pool removed: its VIP entry goes".to_string()),
            (Some(o), Some(n)) if o.endpoint() != n.endpoint() => Some(format!(
                "VIP {}/{} → {}/{}: a new VIP entry",
                o.vip, o.protocol, n.vip, n.protocol
            )),
            (Some(o), Some(n)) if o.mode != n.mode => Some(format!(
                "mode {} → {}: established flows cannot continue in the new mode",
                o.mode, n.mode
            )),
            _ => None,
        };
        let old_ring = ring_of(old_vip, ring_size);
        let new_ring = ring_of(new_vip, ring_size);
        let ring_moved = match (&old_ring, &new_ring) {
            (Some(a), Some(b)) => Some(a.iter().zip(b).filter(|(x, y)| x != y).count() as u32),
            _ => None,
        };
        let old_entries = old_ring
            .as_deref()
            .map(entries_per_slot)
            .unwrap_or_default();
        let new_entries = new_ring
            .as_deref()
            .map(entries_per_slot)
            .unwrap_or_default();
        let old_plan = self.plan.as_ref().and_then(|p| p.pool(name));
        let new_plan = plan.pool(name);
        let mut out = PoolChange {
            name: name.to_string(),
            change: change.to_string(),
            vip: old_pool.map(|p| p.vip.to_string()),
            new_vip: new_pool.map(|p| p.vip.to_string()),
            vip_change: vip_change.clone(),
            ring_moved,
            ring_size,
            ring_moved_share: ring_moved.map(|m| f64::from(m) / f64::from(ring_size)),
            ..PoolChange::default()
        };
        let mut backend_names: Vec<&str> = old_pool
            .map(|p| p.backends.iter().map(|b| b.name.as_str()).collect())
            .unwrap_or_default();
        if let Some(n) = new_pool {
            for b in &n.backends {
                if !backend_names.contains(&b.name.as_str()) {
                    backend_names.push(&b.name);
                }
            }
        }
        for b in backend_names {
            let k = key(name, b);
            let old_cfg = old_pool.and_then(|p| p.backend(b));
            let new_cfg = new_pool.and_then(|p| p.backend(b));
            match (old_cfg, new_cfg) {
                (None, Some(_)) => out.backends_added.push(b.to_string()),
                (Some(_), None) => out.backends_removed.push(b.to_string()),
                (Some(o), Some(n)) if o.weight != n.weight => out.reweighted.push(Reweight {
                    name: b.to_string(),
                    from: o.weight,
                    to: n.weight,
                }),
                _ => {}
            }
            let from = old_cfg.map(|_| {
                old_plan
                    .and_then(|p| p.backend(b))
                    .map_or(BackendState::Down, |p| p.state)
            });
            let to = new_cfg.map(|_| {
                new_plan
                    .and_then(|p| p.backend(b))
                    .map_or(BackendState::Down, |p| p.state)
            });
            let old_slot = self.slots.backends.get(&k).copied();
            let new_slot = slots.backends.get(&k).copied();
            let flows = old_slot.map_or(0, |s| self.flows_of(s));
            let on_down = new_pool.or(old_pool).map_or(OnDown::Reset, |p| p.on_down);
            let fate = if vip_change.is_some() {
                "stranded"
            } else if to.is_none() || (old_slot.is_some() && old_slot != new_slot) {
                // Removed or re-addressed: its old slot retires, draining.
                "drained"
            } else {
                match (from, to) {
                    (Some(f), Some(BackendState::Down)) if f != BackendState::Down => match on_down
                    {
                        OnDown::Reset => "reset",
                        OnDown::Keep => "drained",
                    },
                    (
                        Some(BackendState::Active),
                        Some(BackendState::Draining | BackendState::Standby),
                    ) => "drained",
                    _ => "continue",
                }
            };
            let delta = new_slot.map_or(0, |s| new_entries.get(&s).copied().unwrap_or(0))
                - old_slot.map_or(0, |s| old_entries.get(&s).copied().unwrap_or(0));
            if flows > 0 {
                match fate {
                    "drained" => out.flows_drained += flows,
                    "reset" => out.flows_reset += flows,
                    "stranded" => out.flows_stranded += flows,
                    _ => {}
                }
            }
            let spare = new_cfg
                .or(old_cfg)
                .is_some_and(|c| c.role == config::Role::Spare);
            if spare {
                match (from, to) {
                    (Some(f), Some(BackendState::Active)) if f != BackendState::Active => {
                        out.spares_activated.push(b.to_string())
                    }
                    (None, Some(BackendState::Active)) => out.spares_activated.push(b.to_string()),
                    (Some(BackendState::Active), Some(t)) if t != BackendState::Active => {
                        out.spares_drained.push(b.to_string())
                    }
                    _ => {}
                }
            }
            if from != to || delta != 0 || fate != "continue" {
                out.backends.push(BackendChange {
                    name: b.to_string(),
                    from: from.map_or("new", BackendState::as_str).to_string(),
                    to: to.map_or("removed", BackendState::as_str).to_string(),
                    flows,
                    fate: fate.to_string(),
                    ring_delta: delta,
                });
            }
        }
        if self.config.announce.is_some() || new.announce.is_some() {
            let had = self
                .out
                .live
                .announced
                .as_ref()
                .is_some_and(|w| w.contains_key(name));
            let will = target
                .announced
                .as_ref()
                .is_some_and(|w| w.contains_key(name));
            out.announce = match (had, will) {
                (false, true) => Some("announced".to_string()),
                (true, false) => Some("withdrawn".to_string()),
                _ => None,
            };
        }
        out
    }
}
