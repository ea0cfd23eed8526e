//! What flow sync (`crate::flowsync`) reads of the pinned balancing maps:
//! the VIPs with their live ring, the backend slots with the reference
//! (slot and generation) the flow table pins them by, and single ring
//! entries. Opened from the pins on its own, as the census is: the flow
//! sync task runs beside the controller and writes none of these maps.
use std::{net::SocketAddr, path::Path};

use aya::maps::{Array, HashMap, MapData};
use lb_common::{
    backend_ref, limits::MAX_BACKENDS, maps, ring_slot_index, Addr6, BackendMeta, L4Addr, L4Addr6,
    VipMeta, BACKEND_DOWN, BACKEND_FREE, NO_BACKEND,
};

use super::{
    census::monotonic_coarse_ns, keys::backend_addr, map_err, open_pinned, DataplaneError, Endpoint,
};

/// A backend slot in use, as flow sync names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SyncBackend {
    /// The reference flow entries and rings hold ([`backend_ref`]).
    pub r: u32,
    /// The VIP whose pool it serves.
    pub vip: Endpoint,
    pub addr: SocketAddr,
    /// Whether a synced flow may be pinned to it: not down (nor marked
    /// health-down while kept draining by `on_down = "keep"`). A flow
    /// pinned to a backend that is down here goes by this gateway's ring.
    pub usable: bool,
}

/// The pinned maps flow sync reads.
pub struct SyncMaps {
    vips: HashMap<MapData, L4Addr, VipMeta>,
    vips6: HashMap<MapData, L4Addr6, VipMeta>,
    backends: Array<MapData, BackendMeta>,
    backend_addrs6: Array<MapData, Addr6>,
    rings: Array<MapData, u32>,
    ring_size: u32,
}

impl SyncMaps {
    /// Opens the maps pinned under `pin_path`, whose rings are
    /// `ring_size` long.
    pub fn open(pin_path: &Path, ring_size: u32) -> Result<SyncMaps, DataplaneError> {
        Ok(SyncMaps {
            vips: open_pinned(pin_path, maps::VIPS)?,
            vips6: open_pinned(pin_path, maps::VIPS6)?,
            backends: open_pinned(pin_path, maps::BACKENDS)?,
            backend_addrs6: open_pinned(pin_path, maps::BACKEND_ADDRS6)?,
            rings: open_pinned(pin_path, maps::RINGS)?,
            ring_size,
        })
    }

    /// The VIPs in the maps (both families), with their meta.
    pub fn vips(&self) -> Result<Vec<(Endpoint, VipMeta)>, DataplaneError> {
        super::tables::read_vips(&self.vips, &self.vips6)
    }

    /// Every backend slot in use that serves one of `vips` (as
    /// [`vips`](SyncMaps::vips) returned them).
    pub fn backends(
        &self,
        vips: &[(Endpoint, VipMeta)],
    ) -> Result<Vec<SyncBackend>, DataplaneError> {
        let mut out = Vec::new();
        for slot in 0..MAX_BACKENDS {
            let meta = self
                .backends
                .get(&slot, 0)
                .map_err(map_err(maps::BACKENDS))?;
            if meta.state == BACKEND_FREE {
                continue;
            }
            let Some((vip, _)) = vips.iter().find(|(_, v)| v.index == meta.vip_index) else {
                continue;
            };
            let v6 = || self.backend_addrs6.get(&slot, 0).ok();
            out.push(SyncBackend {
                r: backend_ref(slot, meta.generation),
                vip: *vip,
                addr: backend_addr(&meta, v6),
                usable: meta.state != BACKEND_DOWN
                    && meta.flags & crate::controller::BACKEND_F_HEALTH_DOWN == 0,
            });
        }
        Ok(out)
    }

    /// The backend reference the VIP's live ring gives a flow of ring hash
    /// `hash` (as the program's `from_ring` reads it), or `None` for an
    /// empty entry.
    pub fn ring_choice(&self, vip: &VipMeta, hash: u32) -> Result<Option<u32>, DataplaneError> {
        let idx = ring_slot_index(vip.index, vip.ring_slot & 1, self.ring_size, hash);
        let r = self.rings.get(&idx, 0).map_err(map_err(maps::RINGS))?;
        Ok((r != NO_BACKEND).then_some(r))
    }
}

/// `FlowSlot::seen` for now, on the program's clock (monotonic; the
/// coarse clock lags by at most a tick, well under the entry's ~1 ms unit
/// times the ages that matter).
pub fn flow_seen_now() -> u32 {
    lb_common::flow_seen(monotonic_coarse_ns())
}
