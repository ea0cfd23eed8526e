//! The controller's live view: what `xdplb status`, the admin socket,
//! the metrics and the status page show.
use super::*;

impl<D: DataplaneOps> Controller<D> {
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
                    protocol: pool.protocol,
                    mode: pool.mode,
                    min_active: pool.min_active,
                    on_empty: pool.on_empty,
                    empty: self
                        .slots
                        .vips
                        .get(&pool.name)
                        .and_then(|i| self.out.live.vips.get(i))
                        .is_some_and(|v| v.ring.as_ref().is_some_and(Vec::is_empty)),
                    mean_load: pp.and_then(|p| p.mean_load),
                    announced: self
                        .out
                        .announcer
                        .as_ref()
                        .map(|a| a.bird_has(pool.vip.ip())),
                    announce_intent: self.out.announcer.as_ref().map(|a| a.announces(&pool.name)),
                    backends: pool
                        .backends
                        .iter()
                        .enumerate()
                        .map(|(i, b)| {
                            let k = key(&pool.name, &b.name);
                            let rt = self.runtime.get(&k);
                            let admin = self.admin.get(&k).cloned().unwrap_or_default();
                            let bp = pp.and_then(|p| plan_of(p, i, &b.name));
                            let up = rt
                                .and_then(|r| r.health.as_ref())
                                .and_then(|h| h.up)
                                .unwrap_or(false);
                            let interval = pool.load.as_ref().map_or(1000, |l| l.interval_ms);
                            let slot = self.slots.backends.get(&k).copied();
                            let flows = slot.map_or(0, |s| self.flows_of(s));
                            let half_open = slot
                                .and_then(|s| self.half_open.get(&s))
                                .copied()
                                .unwrap_or(0);
                            BackendStatus {
                                name: b.name.clone(),
                                addr: b.addr.to_string(),
                                role: b.role,
                                health: if up { Health::Up } else { Health::Down },
                                state: bp.map_or(BackendState::Down, |p| p.state),
                                weight: bp.map_or(0, |p| p.weight),
                                config_weight: b.weight,
                                load: rt
                                    .and_then(|r| r.load.as_ref())
                                    .map_or(0.0, |t| t.score(now, interval)),
                                flows,
                                half_open,
                                unanswered: flows == 0 && half_open >= HALF_OPEN_ALARM,
                                reason: bp.map_or(Reason::NotProbed, |p| p.reason),
                                operator_drained: admin.drain,
                                admin_state: admin.state().0,
                                admin_set_by: admin.state().1,
                                weight_override: admin.weight,
                                agent: rt.and_then(|r| r.agent_line.clone()),
                                last_error: rt.and_then(|r| r.last_error.clone()),
                                rtt_ms: rt.and_then(|r| r.rtt).map(|d| d.as_secs_f64() * 1000.0),
                                agent_up: rt.and_then(|r| r.agent_up),
                                agent_error: rt.and_then(|r| r.agent_error.clone()),
                                transitions: rt.map(|r| r.transitions.to_vec()).unwrap_or_default(),
                            }
                        })
                        .collect(),
                }
            })
            .collect();
        let (sync, sync_counters) = match &self.out.flow_sync {
            Some(h) => {
                let (peers, counters) = h.report();
                (Some(peers), Some(counters))
            }
            None => (None, None),
        };
        Status {
            pools,
            detached: self.detached.iter().cloned().collect(),
            sync,
            sync_counters,
        }
    }
}
