//! Choosing a backend for a flow: the flow table first, then the VIP's
//! live Maglev ring. Both hold backend references (slot + generation, see
//! `lb_common::backend_ref`), validated against the slot before use.
use lb_common::{
    flow_hash, ref_generation, ref_slot, ring_slot_index, BackendMeta, FlowEntry, FlowKey,
    GlobalCounter, VipMeta, BACKEND_DOWN, BACKEND_FREE, FLOW_F_CLOSING, NO_BACKEND,
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
    /// Backend slot (counters are per slot).
    pub backend: u32,
    pub meta: BackendMeta,
    pub new_flow: bool,
}

/// The slot a reference names, if it still names it for this VIP: the
/// slot is in use, serves this VIP, and has had no new occupant since.
#[inline(always)]
fn resolve(r: u32, vip: &VipMeta) -> Result<Option<&'static BackendMeta>, GlobalCounter> {
    let Some(meta) = BACKENDS.get(ref_slot(r)) else {
        return Err(GlobalCounter::DropInternal);
    };
    if meta.state == BACKEND_FREE
        || meta.vip_index != vip.index
        || meta.generation != ref_generation(r)
    {
        return Ok(None);
    }
    Ok(Some(meta))
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
        return from_ring(key, vip, now, true);
    }
    if let Some(flow) = FLOWS.get_ptr_mut(key) {
        // SAFETY: the map returned a valid value pointer. Concurrent
        // writers on other CPUs may race on last_seen_ns; it is a hint.
        let flow = unsafe { &mut *flow };
        match resolve(flow.backend, vip)? {
            // A slot freed or reused since must not inherit a stale flow.
            None => count(GlobalCounter::FlowMisses),
            Some(meta) if meta.state == BACKEND_DOWN => count(GlobalCounter::Resteered),
            Some(meta) => {
                flow.last_seen_ns = now;
                if closing {
                    flow.flags |= FLOW_F_CLOSING;
                }
                return Ok(Choice {
                    backend: ref_slot(flow.backend),
                    meta: *meta,
                    new_flow: false,
                });
            }
        }
    } else {
        count(GlobalCounter::FlowMisses);
    }
    from_ring(key, vip, now, true)
}

/// The ring's backend for `key` (recorded in the flow table if `pin`).
#[inline(always)]
pub fn from_ring(
    key: &FlowKey,
    vip: &VipMeta,
    now: u64,
    pin: bool,
) -> Result<Choice, GlobalCounter> {
    // verifier: volatile so the loaded value (set at load time) is used,
    // not the compile-time default folded in.
    let ring_size = unsafe { core::ptr::read_volatile(&RING_SIZE) };
    if ring_size == 0 {
        return Err(GlobalCounter::DropInternal);
    }
    let idx = ring_slot_index(vip.index, vip.ring_slot & 1, ring_size, flow_hash(key));
    let r = match RINGS.get(idx) {
        Some(&r) if r != NO_BACKEND => r,
        Some(_) => return Err(GlobalCounter::DropNoBackend),
        None => return Err(GlobalCounter::DropInternal),
    };
    // The controller takes a backend out of the ring before it marks it
    // down or frees its slot; an entry that fails here is a ring caught
    // mid-rewrite, and guessing another backend would split a flow.
    let meta = match resolve(r, vip)? {
        Some(meta) if meta.state != BACKEND_DOWN => meta,
        _ => return Err(GlobalCounter::DropStaleRing),
    };
    if pin {
        let entry = FlowEntry {
            backend: r,
            vip_index: vip.index as u16,
            flags: 0,
            last_seen_ns: now,
        };
        // A full LRU evicts its oldest entry; insert fails only on memory
        // pressure, and then the flow simply stays ring-steered.
        let _ = FLOWS.insert(key, &entry, 0);
    }
    Ok(Choice {
        backend: ref_slot(r),
        meta: *meta,
        new_flow: pin,
    })
}

/// The backend a flow is on without touching the table: its entry if it
/// is still valid, else the ring's choice (for ICMP errors about it).
#[inline(always)]
pub fn peek(key: &FlowKey, vip: &VipMeta) -> Result<Choice, GlobalCounter> {
    if let Some(flow) = FLOWS.get_ptr(key) {
        // SAFETY: valid map value pointer.
        let r = unsafe { (*flow).backend };
        if let Some(meta) = resolve(r, vip)? {
            if meta.state != BACKEND_DOWN {
                return Ok(Choice {
                    backend: ref_slot(r),
                    meta: *meta,
                    new_flow: false,
                });
            }
        }
    }
    from_ring(key, vip, 0, false)
}
