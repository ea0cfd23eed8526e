//! Choosing a backend for a flow: the flow table first, then the VIP's
//! live Maglev ring.
use lb_common::{
    flow_hash, ring_slot_index, BackendMeta, FlowEntry, FlowKey, GlobalCounter, VipMeta,
    BACKEND_DOWN, BACKEND_FREE, FLOW_F_CLOSING, NO_BACKEND,
};

use crate::{
    maps::{BACKENDS, FLOWS, RINGS},
    stats::count,
};

/// Ring size the rings were sized for at load (`ring_size` in the config).
/// Set by user space with `override_global` before the program loads.
#[no_mangle]
static RING_SIZE: u32 = lb_common::limits::DEFAULT_RING_SIZE;

pub struct Choice {
    pub backend: u32,
    pub meta: BackendMeta,
    pub new_flow: bool,
}

/// The backend for this packet, or the drop reason.
///
/// An established flow stays on its backend while that backend is active,
/// draining or standby; a flow whose backend is down is selected again (its
/// client then gets a RST from the new backend instead of hanging).
///
/// A SYN starts a new connection, so it skips the flow table and goes
/// straight to the ring (as Katran does): that saves a bucket walk on the
/// costliest path, and a port pair reused while its old entry still names a
/// draining backend is steered by the ring like any new flow. A SYN
/// retransmitted across a ring change may land elsewhere; its handshake
/// was not complete, so nothing established moves.
#[inline(always)]
pub fn select(
    key: &FlowKey,
    vip: &VipMeta,
    syn: bool,
    closing: bool,
    now: u64,
) -> Result<Choice, GlobalCounter> {
    if syn {
        return from_ring(key, vip, now);
    }
    if let Some(flow) = FLOWS.get_ptr_mut(key) {
        // SAFETY: the map returned a valid value pointer. Concurrent
        // writers on other CPUs may race on last_seen_ns; it is a hint.
        let flow = unsafe { &mut *flow };
        if let Some(meta) = BACKENDS.get(flow.backend) {
            // A slot freed and reused by another pool must not inherit a
            // stale flow: treat that entry as a miss.
            if meta.vip_index != vip.index || meta.state == BACKEND_FREE {
                count(GlobalCounter::FlowMisses);
                return from_ring(key, vip, now);
            }
            if meta.state != BACKEND_DOWN {
                flow.last_seen_ns = now;
                if closing {
                    flow.flags |= FLOW_F_CLOSING;
                }
                return Ok(Choice {
                    backend: flow.backend,
                    meta: *meta,
                    new_flow: false,
                });
            }
            count(GlobalCounter::Resteered);
        }
    } else {
        count(GlobalCounter::FlowMisses);
    }
    from_ring(key, vip, now)
}

/// The ring's backend for `key`, recorded in the flow table.
#[inline(always)]
fn from_ring(key: &FlowKey, vip: &VipMeta, now: u64) -> Result<Choice, GlobalCounter> {
    // verifier: volatile so the loaded value (set at load time) is used,
    // not the compile-time default folded in.
    let ring_size = unsafe { core::ptr::read_volatile(&RING_SIZE) };
    if ring_size == 0 {
        return Err(GlobalCounter::DropInternal);
    }
    let idx = ring_slot_index(vip.index, vip.ring_slot & 1, ring_size, flow_hash(key));
    let backend = match RINGS.get(idx) {
        Some(&b) if b != NO_BACKEND => b,
        Some(_) => return Err(GlobalCounter::DropNoBackend),
        None => return Err(GlobalCounter::DropInternal),
    };
    let Some(meta) = BACKENDS.get(backend) else {
        return Err(GlobalCounter::DropInternal);
    };
    let entry = FlowEntry {
        backend,
        vip_index: vip.index as u16,
        flags: 0,
        last_seen_ns: now,
    };
    // A full LRU evicts its oldest entry; insert fails only on memory
    // pressure, and then the flow simply stays ring-steered.
    let _ = FLOWS.insert(key, &entry, 0);
    Ok(Choice {
        backend,
        meta: *meta,
        new_flow: true,
    })
}
