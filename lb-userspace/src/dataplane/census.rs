//! The flow census: established and half-open flows per backend slot,
//! counted from the pinned flow table (closed and idle flows reaped on the
//! way).
use std::{collections::HashMap as StdHashMap, path::Path};

use aya::maps::{Array, HashMap, MapData};
use lb_common::{
    limits::MAX_BACKENDS, maps, ref_slot, BackendMeta, FlowSlot, L4Addr, L4Addr6, VipMeta,
};

use super::{map_err, open_pinned, DataplaneError, FlowTable};

/// Established flows per backend slot: flow-table entries seen within
/// `idle` whose client has not sent FIN or RST. Abandoned connections stay
/// in the table until their slot is needed; the flag and the recency cut
/// keep them out of the count. Closed flows (RST, or FIN both ways) past
/// their linger, and flows idle past their VIP's `flow_idle_ms` (which the
/// program would select afresh anyway), are cleared on the way, so their
/// slots are free before any live flow's. Reads the table through its
/// mapping (a 16 MiB scan at the default size); stops after counting
/// `limit` flows.
pub fn flow_counts(
    pin_path: &Path,
    limit: usize,
    idle: std::time::Duration,
) -> Result<StdHashMap<u32, u64>, DataplaneError> {
    flow_census(pin_path, limit, idle).map(|c| c.established)
}

/// What a walk of the flow tables found, per backend slot.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FlowCensus {
    /// See [`flow_counts`].
    pub established: StdHashMap<u32, u64>,
    /// Recent TCP flows whose client never sent an ACK: the handshake did
    /// not complete (the backend's SYN-ACK never reached the client).
    pub half_open: StdHashMap<u32, u64>,
}

/// What the census makes of one flow entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlowVerdict {
    /// Over (closed and lingered out, or idle past its VIP's
    /// `flow_idle_ms`): removed.
    Reap,
    /// Closing, or not seen within the census's idle cut: not counted.
    Skip,
    /// Counted as established on this backend slot.
    Established(u32),
    /// Counted as half open on this backend slot.
    HalfOpen(u32),
}

/// Judges a flow entry whose VIP has `flow_idle_ms`, at `now` (the
/// program's clock), counting only flows seen within `idle_ns`. UDP has no
/// handshake and no FIN: a UDP flow is established from its first packet,
/// and ends only by going quiet. Pure.
pub fn judge_flow(entry: &FlowSlot, flow_idle_ms: u32, now: u64, idle_ns: u64) -> FlowVerdict {
    // The program may stamp an entry after `now` was read: age 0 (see
    // `FlowSlot::age_ns`).
    let age = entry.age_ns(now);
    if lb_common::flow_idle(flow_idle_ms, age) {
        return FlowVerdict::Reap;
    }
    let slot = ref_slot(entry.backend);
    let flags = entry.flags();
    if flags & lb_common::FLOW_F_UDP != 0 {
        return if age > idle_ns {
            FlowVerdict::Skip
        } else {
            FlowVerdict::Established(slot)
        };
    }
    if lb_common::flow_closed(flags) {
        return if age > lb_common::limits::FLOW_LINGER_NS {
            FlowVerdict::Reap
        } else {
            FlowVerdict::Skip
        };
    }
    if flags & lb_common::FLOW_F_CLOSING != 0 || age > idle_ns {
        return FlowVerdict::Skip;
    }
    if flags & lb_common::FLOW_F_ACKED == 0 {
        FlowVerdict::HalfOpen(slot)
    } else {
        FlowVerdict::Established(slot)
    }
}

/// `flow_idle_ms` of the VIP a backend slot serves, from the pinned
/// `BACKENDS`, `VIPS` and `VIPS6`; each slot looked up once.
struct IdleTimes {
    by_vip: StdHashMap<u32, u32>,
    backends: Array<MapData, BackendMeta>,
    by_slot: StdHashMap<u32, u32>,
}

impl IdleTimes {
    fn open(pin_path: &Path) -> Result<IdleTimes, DataplaneError> {
        let vips: HashMap<MapData, L4Addr, VipMeta> = open_pinned(pin_path, maps::VIPS)?;
        let vips6: HashMap<MapData, L4Addr6, VipMeta> = open_pinned(pin_path, maps::VIPS6)?;
        let by_vip = vips
            .iter()
            .flatten()
            .map(|(_, m)| m)
            .chain(vips6.iter().flatten().map(|(_, m)| m))
            .map(|m| (m.index, m.flow_idle_ms))
            .collect();
        Ok(IdleTimes {
            by_vip,
            backends: open_pinned(pin_path, maps::BACKENDS)?,
            by_slot: StdHashMap::new(),
        })
    }

    fn of_slot(&mut self, slot: u32) -> Result<u32, DataplaneError> {
        if let Some(&ms) = self.by_slot.get(&slot) {
            return Ok(ms);
        }
        let ms = if slot < MAX_BACKENDS {
            let vip = self
                .backends
                .get(&slot, 0)
                .map_err(map_err(maps::BACKENDS))?
                .vip_index;
            self.by_vip.get(&vip).copied().unwrap_or(0)
        } else {
            0
        };
        self.by_slot.insert(slot, ms);
        Ok(ms)
    }
}

/// [`flow_counts`] with the half-open flows counted too.
pub fn flow_census(
    pin_path: &Path,
    limit: usize,
    idle: std::time::Duration,
) -> Result<FlowCensus, DataplaneError> {
    let table = FlowTable::open(pin_path)?;
    let mut idle_of = IdleTimes::open(pin_path)?;
    let now = monotonic_coarse_ns();
    let idle = idle.as_nanos() as u64;
    let mut census = FlowCensus::default();
    let mut counted = 0;
    for (index, flow) in table.occupied() {
        let flow_idle_ms = idle_of.of_slot(ref_slot(flow.backend))?;
        let (map, slot) = match judge_flow(&flow, flow_idle_ms, now, idle) {
            FlowVerdict::Established(s) => (&mut census.established, s),
            FlowVerdict::HalfOpen(s) => (&mut census.half_open, s),
            FlowVerdict::Skip => continue,
            FlowVerdict::Reap => {
                // Given to another flow since it was read: fine.
                table.clear(index, flow.tag);
                continue;
            }
        };
        *map.entry(slot).or_insert(0) += 1;
        counted += 1;
        if counted >= limit {
            break;
        }
    }
    Ok(census)
}

/// The clock the program stamps flows with (`bpf_ktime_get_coarse_ns`).
pub(super) fn monotonic_coarse_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

#[cfg(test)]
mod tests {
    use lb_common::backend_ref;

    use super::*;

    #[test]
    fn the_census_judges_each_protocol_by_its_own_rules() {
        const S: u64 = 1_000_000_000;
        let now = 1000 * S;
        let idle = 30 * S;
        let e = |flags: u16, age_ms: u64| FlowSlot {
            tag: 0x1234_5600 | flags as u64,
            backend: backend_ref(7, 3),
            seen: lb_common::flow_seen(now - age_ms * 1_000_000),
        };
        let udp_flags = lb_common::FLOW_F_UDP | lb_common::FLOW_F_ACKED;
        let tcp = |entry, flow_idle_ms| judge_flow(&entry, flow_idle_ms, now, idle);
        let udp = |entry: FlowSlot, flow_idle_ms| {
            let entry = FlowSlot {
                tag: entry.tag | udp_flags as u64,
                ..entry
            };
            judge_flow(&entry, flow_idle_ms, now, idle)
        };
        let acked = lb_common::FLOW_F_ACKED;
        assert_eq!(tcp(e(acked, 1000), 0), FlowVerdict::Established(7));
        assert_eq!(tcp(e(0, 1000), 0), FlowVerdict::HalfOpen(7));
        assert_eq!(tcp(e(acked, 31_000), 0), FlowVerdict::Skip);
        assert_eq!(
            tcp(e(acked | lb_common::FLOW_F_CLOSING, 1000), 0),
            FlowVerdict::Skip
        );
        assert_eq!(tcp(e(lb_common::FLOW_F_RESET, 1000), 0), FlowVerdict::Skip);
        assert_eq!(tcp(e(lb_common::FLOW_F_RESET, 5000), 0), FlowVerdict::Reap);
        // A TCP pool may idle flows out too.
        assert_eq!(tcp(e(acked, 20_000), 10_000), FlowVerdict::Reap);
        // UDP: established from the first packet, no FIN to wait for; gone
        // past idle + the entry clock's resolution (~1 ms units), not
        // before (hence the 10 ms margins).
        assert_eq!(udp(e(0, 1000), 30_000), FlowVerdict::Established(7));
        assert_eq!(udp(e(0, 29_990), 30_000), FlowVerdict::Established(7));
        assert_eq!(udp(e(0, 30_010), 30_000), FlowVerdict::Reap);
        assert_eq!(udp(e(0, 4_990), 5_000), FlowVerdict::Established(7));
        assert_eq!(udp(e(0, 5_010), 5_000), FlowVerdict::Reap);
        // flow_idle_ms 0: never reaped, only left out of the count.
        assert_eq!(udp(e(0, 300_000), 0), FlowVerdict::Skip);
        // Stamped after `now` was read (another CPU's clock ticked): fresh.
        let ahead = FlowSlot {
            seen: lb_common::flow_seen(now + S / 100),
            ..e(0, 0)
        };
        assert_eq!(udp(ahead, 5_000), FlowVerdict::Established(7));
    }
}
