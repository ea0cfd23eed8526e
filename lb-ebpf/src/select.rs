//! Choosing a backend for a flow: the flow table first, then the VIP's
//! live Maglev ring. Both hold backend references (slot + generation, see
//! `lb_common::backend_ref`), validated against the slot before use.
//!
//! What the table must withstand (after Katran): a SYN or ACK flood must
//! not evict established flows (inserts are rate-capped per CPU; FIN and
//! RST never insert), a spoofed or retransmitted SYN must not move an
//! established flow (it keeps its pin), and closed connections give their
//! entries back (they linger briefly, then the next connection on the same
//! 4-tuple replaces them and the controller reaps the rest).
use lb_common::{
    flow_closed, flow_hash, flow_hash6, flow_idle, limits::FLOW_LINGER_NS,
    limits::LAST_SEEN_RESOLUTION_NS, ref_generation, ref_slot, ring_slot_index, BackendMeta,
    FlowEntry, FlowKey, FlowKey6, GlobalCounter, VipMeta, BACKEND_DOWN, BACKEND_FREE, FLOW_F_ACKED,
    FLOW_F_CLOSING, FLOW_F_RESET, IPPROTO_UDP, NO_BACKEND,
};

use aya_ebpf::{
    bindings::{BPF_ANY, BPF_NOEXIST},
    maps::LruHashMap,
};

use crate::{
    consts::{TCP_FLAG_ACK, TCP_FLAG_FIN, TCP_FLAG_RST, TCP_FLAG_SYN},
    maps::{BACKENDS, FLOWS, FLOWS6, INSERT_RATE, RINGS},
    stats::count,
};

/// A flow's key in its family's table: the same selection logic runs on
/// `FLOWS` (IPv4) and `FLOWS6`, monomorphised, so IPv4 keeps its small key.
pub trait Flow: Sized + 'static {
    fn table() -> &'static LruHashMap<Self, FlowEntry>;
    /// The ring hash (`lb_common::flow_hash` / `flow_hash6`).
    fn hash(&self) -> u32;
    fn proto(&self) -> u8;
}

impl Flow for FlowKey {
    #[inline(always)]
    fn table() -> &'static LruHashMap<Self, FlowEntry> {
        &FLOWS
    }
    #[inline(always)]
    fn hash(&self) -> u32 {
        flow_hash(self)
    }
    #[inline(always)]
    fn proto(&self) -> u8 {
        self.proto
    }
}

impl Flow for FlowKey6 {
    #[inline(always)]
    fn table() -> &'static LruHashMap<Self, FlowEntry> {
        &FLOWS6
    }
    #[inline(always)]
    fn hash(&self) -> u32 {
        flow_hash6(self)
    }
    #[inline(always)]
    fn proto(&self) -> u8 {
        self.proto
    }
}

/// Ring size the rings were sized for at load (`ring_size` in the config).
/// Set by user space with `override_global` before the program loads.
#[no_mangle]
static RING_SIZE: u32 = lb_common::limits::DEFAULT_RING_SIZE;

/// `[dataplane] max_flow_inserts_per_sec` (per CPU; 0 = no cap). Set by
/// user space with `override_global` before the program loads.
#[no_mangle]
static MAX_FLOW_INSERTS_PER_SEC: u32 = lb_common::limits::DEFAULT_MAX_FLOW_INSERTS_PER_SEC;

pub struct Choice {
    /// Backend slot (counters are per slot).
    pub backend: u32,
    pub meta: BackendMeta,
    /// A connection the table did not know was balanced by the ring.
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

/// The flag bits a segment with TCP flags `tcp` adds to its flow.
#[inline(always)]
fn closing_bits(tcp: u8) -> u16 {
    let mut bits = 0;
    if tcp & (TCP_FLAG_FIN | TCP_FLAG_RST) != 0 {
        bits |= FLOW_F_CLOSING;
    }
    if tcp & TCP_FLAG_RST != 0 {
        bits |= FLOW_F_RESET;
    }
    bits
}

/// The backend for a client's packet with TCP flags `tcp` (0 for UDP), or
/// the drop reason.
///
/// An established flow stays on its backend while that backend is active,
/// draining or standby — a SYN on it included (a retransmission, or a
/// spoof). A flow whose backend is down is selected again (its client then
/// gets a RST from the new backend instead of hanging). A closed flow's
/// entry steers stragglers for `FLOW_LINGER_NS`; a SYN on it, or anything
/// after the linger, starts afresh.
///
/// UDP has no handshake: the first datagram of a flow the table does not
/// know is balanced by the ring and recorded (within the insert rate), and
/// an entry idle past the VIP's `flow_idle_ms` is forgotten. A UDP flow
/// counts as answered (`FLOW_F_ACKED`) from the start: there is no
/// handshake to be half-way through.
#[inline(always)]
pub fn select<K: Flow>(key: &K, vip: &VipMeta, tcp: u8, now: u64) -> Result<Choice, GlobalCounter> {
    let udp = key.proto() == IPPROTO_UDP;
    let syn = !udp && tcp & (TCP_FLAG_SYN | TCP_FLAG_ACK) == TCP_FLAG_SYN;
    if syn {
        return select_syn(key, vip, now);
    }
    let closing = closing_bits(tcp);
    let acked = if udp || tcp & TCP_FLAG_ACK != 0 {
        FLOW_F_ACKED
    } else {
        0
    };
    // Flags a re-steered flow keeps in its new entry.
    let mut carried = 0;
    if let Some(flow) = K::table().get_ptr_mut(key) {
        // SAFETY: the map returned a valid value pointer. Concurrent
        // writers on other CPUs may race on last_seen_ns and flags; both
        // are hints whose worst case is an early or late expiry.
        match pinned(unsafe { &mut *flow }, vip, closing | acked, now)? {
            Pinned::Keep(choice) => return Ok(choice),
            Pinned::Resteer(flags) => carried = flags,
            Pinned::Gone => {}
        }
    } else if !udp {
        count(GlobalCounter::FlowMisses);
    }
    // A FIN or RST the table does not know ends nothing worth remembering
    // (Katran never records RSTs): steer it, insert nothing.
    let pin = if closing == 0 || carried != 0 {
        Some(carried | closing | acked)
    } else {
        None
    };
    let (choice, _) = from_ring(key, vip, now, pin, 0)?;
    Ok(choice)
}

/// What an existing entry says about a packet of its flow.
enum Pinned {
    /// Still its backend's: use it.
    Keep(Choice),
    /// Its backend is down: select again, keeping these flags.
    Resteer(u16),
    /// Over (closed and lingered out, or a SYN after close) or stale (a
    /// slot freed or reused since): a new flow.
    Gone,
}

#[inline(always)]
fn pinned(
    flow: &mut FlowEntry,
    vip: &VipMeta,
    bits: u16,
    now: u64,
) -> Result<Pinned, GlobalCounter> {
    if flow_closed(flow.flags) && now.wrapping_sub(flow.last_seen_ns) > FLOW_LINGER_NS {
        return Ok(Pinned::Gone);
    }
    if flow_idle(vip.flow_idle_ms, flow.last_seen_ns, now) {
        count(GlobalCounter::FlowIdled);
        return Ok(Pinned::Gone);
    }
    match resolve(flow.backend, vip)? {
        None => {
            count(GlobalCounter::FlowMisses);
            Ok(Pinned::Gone)
        }
        Some(meta) if meta.state == BACKEND_DOWN => {
            count(GlobalCounter::Resteered);
            Ok(Pinned::Resteer(flow.flags))
        }
        Some(meta) => {
            let flags = flow.flags | bits;
            if flags != flow.flags {
                flow.flags = flags;
                flow.last_seen_ns = now;
            } else if now.wrapping_sub(flow.last_seen_ns) > LAST_SEEN_RESOLUTION_NS {
                flow.last_seen_ns = now;
            }
            Ok(Pinned::Keep(Choice {
                backend: ref_slot(flow.backend),
                meta: *meta,
                new_flow: false,
            }))
        }
    }
}

/// A SYN: usually a new flow, so it is inserted straight away, only if
/// its 4-tuple is not in the table (BPF_NOEXIST) — one bucket walk instead
/// of a lookup and an insert. If it is there, the entry decides: a live
/// pin stays (a retransmitted or spoofed SYN must not move a connection);
/// a closed connection's entry is replaced by the new one.
#[inline(always)]
fn select_syn<K: Flow>(key: &K, vip: &VipMeta, now: u64) -> Result<Choice, GlobalCounter> {
    let (choice, inserted) = from_ring(key, vip, now, Some(0), BPF_NOEXIST as u64)?;
    if inserted {
        return Ok(choice);
    }
    if let Some(flow) = K::table().get_ptr_mut(key) {
        // SAFETY: as in `select`.
        let flow = unsafe { &mut *flow };
        if !flow_closed(flow.flags) {
            if let Pinned::Keep(kept) = pinned(flow, vip, 0, now)? {
                return Ok(kept);
            }
        }
        // Over, stale or down: the new connection takes the entry.
        let (choice, _) = from_ring(key, vip, now, Some(0), BPF_ANY as u64)?;
        return Ok(choice);
    }
    // Not inserted (over the insert rate) and not in the table.
    Ok(choice)
}

/// Whether this CPU may insert another flow this second.
#[inline(always)]
fn may_insert(now: u64) -> bool {
    // verifier: volatile so the loaded value (set at load time) is used,
    // not the compile-time default folded in.
    let cap = unsafe { core::ptr::read_volatile(&MAX_FLOW_INSERTS_PER_SEC) } as u64;
    if cap == 0 {
        return true;
    }
    let Some(w) = INSERT_RATE.get_ptr_mut(0) else {
        return true;
    };
    // SAFETY: a per-CPU slot only this CPU writes while we run.
    let w = unsafe { &mut *w };
    if now.wrapping_sub(w.start_ns) >= 1_000_000_000 {
        w.start_ns = now;
        w.inserts = 0;
    }
    if w.inserts >= cap {
        count(GlobalCounter::FlowInsertsCapped);
        return false;
    }
    w.inserts += 1;
    true
}

/// The ring's backend for `key`; recorded in the flow table with `pin`'s
/// flags if `pin` is given and the insert rate allows, with the map update
/// flags `update` (BPF_ANY, or BPF_NOEXIST to keep an existing entry).
/// Returns whether an entry was written.
#[inline(always)]
pub fn from_ring<K: Flow>(
    key: &K,
    vip: &VipMeta,
    now: u64,
    pin: Option<u16>,
    update: u64,
) -> Result<(Choice, bool), GlobalCounter> {
    // verifier: volatile, as above.
    let ring_size = unsafe { core::ptr::read_volatile(&RING_SIZE) };
    if ring_size == 0 {
        return Err(GlobalCounter::DropInternal);
    }
    let idx = ring_slot_index(vip.index, vip.ring_slot & 1, ring_size, key.hash());
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
    let mut inserted = false;
    if let Some(flags) = pin {
        if may_insert(now) {
            let entry = FlowEntry {
                backend: r,
                vip_index: vip.index as u16,
                flags,
                last_seen_ns: now,
            };
            // A full LRU evicts its oldest entry; insert fails only on
            // memory pressure (then the flow stays ring-steered) or, with
            // BPF_NOEXIST, when the 4-tuple is already there.
            if K::table().insert(key, &entry, update).is_ok() {
                count(GlobalCounter::FlowInserts);
                inserted = true;
            }
        }
    }
    Ok((
        Choice {
            backend: ref_slot(r),
            meta: *meta,
            new_flow: pin.is_some(),
        },
        inserted,
    ))
}

/// The backend a flow is on without touching the table: its entry if it
/// is still valid, else the ring's choice (for ICMP errors about it).
#[inline(always)]
pub fn peek<K: Flow>(key: &K, vip: &VipMeta) -> Result<Choice, GlobalCounter> {
    if let Some(flow) = K::table().get_ptr(key) {
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
    from_ring(key, vip, 0, None, 0).map(|(choice, _)| choice)
}

/// Records what a backend's FIN or RST (with TCP flags `tcp`) tells about
/// the flow it belongs to; replies look the table up only for these.
#[inline(always)]
pub fn note_backend_close<K: Flow>(key: &K, tcp: u8, now: u64) {
    let bits = if tcp & TCP_FLAG_RST != 0 {
        FLOW_F_RESET
    } else {
        lb_common::FLOW_F_BACKEND_FIN
    };
    if let Some(flow) = K::table().get_ptr_mut(key) {
        // SAFETY: valid map value pointer; see `select` on races.
        let flow = unsafe { &mut *flow };
        if flow.flags & bits != bits {
            flow.flags |= bits;
            flow.last_seen_ns = now;
        }
    }
}
