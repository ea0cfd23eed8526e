//! The reconciler: the complete target image of the data plane from the
//! config, its placement, the planner's plan and the live image (for what
//! only the maps know: the entries of retiring slots). Pure: no I/O, no
//! clock.
use super::*;

/// Everything the target image depends on.
pub(super) struct World<'a> {
    pub(super) config: &'a Config,
    pub(super) slots: &'a Slots,
    /// The plan for `config` (every pool and backend of it); `None` before
    /// the first probes are in: what stays is then held as pinned.
    pub(super) plan: Option<&'a Plan>,
    pub(super) admin: &'a AdminStates,
    /// What the maps hold now.
    pub(super) live: &'a Image,
    /// Retiring slots whose flows are over: freed by this image.
    pub(super) freed: &'a [u32],
    /// Whether the program is attached (announcements follow it).
    pub(super) attached: bool,
    /// Established flows per slot, as last counted (`None`: not yet).
    pub(super) flows: Option<&'a HashMap<u32, u64>>,
    /// Pools whose ring has been empty for less than
    /// [`DRAIN_ANNOUNCE_HOLD`] (or is not empty).
    pub(super) drain_held: &'a HashSet<String>,
}

/// Whether a backend `plan` drains still holds established flows (not
/// counted yet counts as holding).
fn drained_flows(w: &World, pool: &PoolConfig) -> bool {
    let Some(pp) = w.plan.and_then(|p| p.pool(&pool.name)) else {
        return false;
    };
    pp.backends
        .iter()
        .filter(|b| b.state == BackendState::Draining)
        .filter_map(|b| w.slots.backends.get(&key(&pool.name, &b.name)))
        .any(|slot| w.flows.is_none_or(|f| f.get(slot).is_some_and(|n| *n > 0)))
}

/// The image the data plane should hold. Pure.
///
/// Before the first plan (a restart waiting for its first probes) the
/// pinned state of what the config keeps is held as it is: a backend's
/// slot keeps its state, a VIP its ring, nothing is announced anew; what
/// the config dropped goes at once (a removed VIP stops taking flows, a
/// removed backend drains), and a new pool waits for the plan.
pub(super) fn target(w: &World) -> Image {
    let mut img = Image::default();
    for pool in &w.config.pools {
        let Some(&vip_index) = w.slots.vips.get(&pool.name) else {
            continue;
        };
        img.names.insert(vip_index, pool.name.clone());
        let pp = w.plan.and_then(|p| p.pool(&pool.name));
        let mut ring = Vec::new();
        for (i, b) in pool.backends.iter().enumerate() {
            let k = key(&pool.name, &b.name);
            let Some(&slot) = w.slots.backends.get(&k) else {
                continue;
            };
            img.names.insert(backend_name_index(slot), b.name.clone());
            // Direct return: the backend answers from the VIP itself, and
            // nothing from its own address is ours to rewrite.
            if pool.mode == config::Mode::Nat {
                img.replies.insert(
                    pool.backend_endpoint(b),
                    ReplyImage {
                        vip: pool.vip,
                        slot,
                        vip_index,
                    },
                );
            }
            if w.plan.is_none() {
                let held = w
                    .live
                    .slots
                    .get(&slot)
                    .filter(|m| m.addr == b.addr && m.vip_index == vip_index);
                if let Some(meta) = held {
                    img.slots.insert(slot, meta.clone());
                }
                continue;
            }
            // A backend the plan does not name (none: the plan is of this
            // config) would be down.
            let (state, weight) = pp
                .and_then(|pp| plan_of(pp, i, &b.name))
                .map_or((BackendState::Down, 0), |bp| (bp.state, bp.weight));
            img.slots.insert(
                slot,
                BackendSlot {
                    slot,
                    vip_index,
                    addr: b.addr,
                    state: slot_state(pool.on_down, state),
                    flags: slot_flags(
                        pool.on_down,
                        state,
                        w.admin.get(&k).is_some_and(|a| a.drain),
                    ),
                },
            );
            if state == BackendState::Active && weight > 0 {
                ring.push(RingMember {
                    slot,
                    name: b.name.clone(),
                    weight,
                });
            }
        }
        if w.plan.is_none() {
            let held = w
                .live
                .vips
                .get(&vip_index)
                .filter(|v| v.endpoint == pool.endpoint());
            if let Some(vip) = held {
                img.vips.insert(vip_index, vip.clone());
            }
            continue;
        }
        img.vips.insert(
            vip_index,
            VipImage {
                pool: pool.name.clone(),
                endpoint: pool.endpoint(),
                flags: vip_flags(pool),
                flow_idle_ms: pool.flow_idle_ms,
                ring: Some(ring),
            },
        );
    }
    // Retiring slots drain until freed; their replies stay until then,
    // unless a backend of the config took the address back.
    let kept: HashSet<u32> = w
        .slots
        .retiring
        .keys()
        .filter(|s| !w.freed.contains(s))
        .copied()
        .collect();
    for slot in &kept {
        if let Some(meta) = w.live.slots.get(slot) {
            img.slots.insert(
                *slot,
                BackendSlot {
                    state: BACKEND_DRAINING,
                    ..meta.clone()
                },
            );
        }
    }
    for (backend, reply) in &w.live.replies {
        if kept.contains(&reply.slot) && !img.replies.contains_key(backend) {
            img.replies.insert(*backend, *reply);
        }
    }
    // [announce]: a VIP is announced while its ring has an active backend
    // (or, every backend drained, while they hold flows: at most
    // DRAIN_ANNOUNCE_HOLD) and the program forwards (`xdplb down --force`
    // can detach it under us; announcing then would draw traffic to a
    // gateway that passes it to its kernel).
    if w.plan.is_none() {
        img.announced = w.live.announced.clone();
        return img;
    }
    img.announced = w.config.announce.as_ref().map(|_| {
        w.config
            .pools
            .iter()
            .filter(|p| {
                let serves = w
                    .slots
                    .vips
                    .get(&p.name)
                    .and_then(|i| img.vips.get(i))
                    .is_some_and(VipImage::serves);
                let held = w.drain_held.contains(&p.name) && drained_flows(w, p);
                w.attached && (serves || held)
            })
            .map(|p| (p.name.clone(), p.vip.ip()))
            .collect()
    });
    img
}
