//! Choosing a backend for a flow: the flow table first, then the VIP's
//! live Maglev ring. Both hold backend references (slot + generation, see
//! `lb_common::backend_ref`), validated against the slot before use.
//!
//! What the table must withstand (after Katran, and conntrack's early
//! drop): a SYN or ACK flood must not evict established flows. A new flow
//! takes, in its two buckets, a free way (empty, or a closed flow's past
//! its linger), else the least recently seen entry that never saw both
//! directions (a flood's, a half-open one's, UDP's), else the least
//! recently seen closed one, and only when all 16 ways hold established
//! flows the least recently seen of those. Inserts are also capped (the
//! host's `max_flow_inserts_per_sec`, shared by its CPUs), FIN and RST
//! never insert, a spoofed or retransmitted SYN must not move an
//! established flow (it keeps its pin), and closed connections give their
//! entries back (they linger briefly, then theirs is the first slot a new
//! flow in the bucket takes).
use lb_common::{
    flow_bucket_pair, flow_closed, flow_established, flow_hash, flow_hash6, flow_idle, flow_seen,
    flow_tag, flow_tag6, limits::FLOW_LINGER_NS, ref_generation, ref_slot, ring_slot_index,
    BackendMeta, FlowKey, FlowKey6, FlowSlot, GlobalCounter, VipMeta, BACKEND_DOWN, BACKEND_FREE,
    EXPLAIN_PIN_CLOSED, EXPLAIN_PIN_DOWN, EXPLAIN_PIN_IDLE, EXPLAIN_PIN_KEEP, EXPLAIN_PIN_REOPENED,
    EXPLAIN_PIN_STALE, FLOW_F_ACKED, FLOW_F_CLOSING, FLOW_F_RESET, FLOW_F_UDP, FLOW_SEEN_SHIFT,
    FLOW_TAG_FLAGS, FLOW_WAYS, IPPROTO_UDP, NO_BACKEND,
};

use crate::{
    consts::{TCP_FLAG_ACK, TCP_FLAG_FIN, TCP_FLAG_RST, TCP_FLAG_SYN},
    maps::{BACKENDS, FLOWS, INSERT_RATE, RINGS},
    stats::count,
    trace,
};

/// A flow's 5-tuple, of either family: the same selection logic runs on
/// both, monomorphised (see `family`).
pub trait Flow: Sized + Copy + 'static {
    type Addr: Copy;
    fn new(src: &Self::Addr, dst: &Self::Addr, src_port: u16, dst_port: u16, proto: u8) -> Self;
    fn src(&self) -> Self::Addr;
    fn dst(&self) -> Self::Addr;
    /// Network order.
    fn src_port(&self) -> u16;
    /// Network order.
    fn dst_port(&self) -> u16;
    fn proto(&self) -> u8;
    /// Its tag in `FLOWS` (`lb_common::flow_tag` / `flow_tag6`).
    fn tag(&self, seed: u64) -> u64;
    /// The ring hash (`lb_common::flow_hash` / `flow_hash6`).
    fn hash(&self) -> u32;
}

macro_rules! flow_key {
    ($key:ty, $addr:ty, $tag:ident, $hash:ident) => {
        impl Flow for $key {
            type Addr = $addr;
            #[inline(always)]
            fn new(src: &$addr, dst: &$addr, src_port: u16, dst_port: u16, proto: u8) -> Self {
                Self {
                    src_addr: *src,
                    dst_addr: *dst,
                    src_port,
                    dst_port,
                    proto,
                    _pad: [0; 3],
                }
            }
            #[inline(always)]
            fn src(&self) -> $addr {
                self.src_addr
            }
            #[inline(always)]
            fn dst(&self) -> $addr {
                self.dst_addr
            }
            #[inline(always)]
            fn src_port(&self) -> u16 {
                self.src_port
            }
            #[inline(always)]
            fn dst_port(&self) -> u16 {
                self.dst_port
            }
            #[inline(always)]
            fn proto(&self) -> u8 {
                self.proto
            }
            #[inline(always)]
            fn tag(&self, seed: u64) -> u64 {
                $tag(self, seed)
            }
            #[inline(always)]
            fn hash(&self) -> u32 {
                $hash(self)
            }
        }
    };
}

flow_key!(FlowKey, u32, flow_tag, flow_hash);
flow_key!(FlowKey6, lb_common::Addr6, flow_tag6, flow_hash6);

/// The flow table's tag key (as in the `FLOW_SEED` map). Set by user space with
/// `override_global` before the program loads.
#[no_mangle]
static FLOW_TAG_SEED: u64 = 0;

/// Buckets in `FLOWS` (`flow_table_size / FLOW_WAYS`). Set by user space
/// with `override_global` before the program loads.
#[no_mangle]
static FLOW_BUCKETS: u32 = lb_common::flow_buckets(lb_common::limits::DEFAULT_FLOW_TABLE_SIZE);

/// Where a flow is, or would go, in its two buckets. Ways 0..FLOW_WAYS
/// are the first bucket's, the rest the second's. Bucket indices, not
/// pointers (verifier: two map-value pointers kept live through the
/// selection pushed the IPv4 program's stack over 512 bytes; an array
/// lookup again is a few instructions, which the verifier inlines).
struct Place {
    buckets: (u32, u32),
    tag: u64,
    /// The way holding the flow, or [`NO_WAY`].
    hit: u32,
    /// The way a new entry takes: an empty one, else a closed flow's past
    /// its linger, else the least recently seen of both buckets.
    victim: u32,
}

const NO_WAY: u32 = u32::MAX;

impl Place {
    #[inline(always)]
    fn hit(&self) -> Option<u32> {
        (self.hit != NO_WAY).then_some(self.hit)
    }

    #[inline(always)]
    fn slot(&self, way: u32) -> Result<&'static mut FlowSlot, GlobalCounter> {
        // verifier: a branch, not `buckets[way / FLOW_WAYS]`, which LLVM
        // addresses with an OR on the frame pointer.
        let bucket = if (way as usize) < FLOW_WAYS {
            self.buckets.0
        } else {
            self.buckets.1
        };
        let Some(bucket) = FLOWS.get_ptr_mut(bucket) else {
            return Err(GlobalCounter::DropInternal);
        };
        // SAFETY: a map value valid for the program's run; the mask keeps
        // the offset inside it (verifier).
        Ok(unsafe { &mut (*bucket).slots[way as usize & (FLOW_WAYS - 1)] })
    }
}

/// How much a new flow would rather take a way: free (empty, or closed
/// past its linger) first, then an entry that never saw both directions,
/// then a closed one lingering, last an established flow.
const RANK_FREE: u32 = 3;
const RANK_UNESTABLISHED: u32 = 2;
const RANK_CLOSED: u32 = 1;
const RANK_ESTABLISHED: u32 = 0;
/// Ages (in `flow_seen` units) past this count as this: the rank sits
/// above them in a victim's score.
const MAX_AGE: u32 = (1 << 30) - 1;

/// Scans bucket `index` of `FLOWS` (its ways numbered from `base`) for
/// `tag`, and for the way a new flow would take. Returns, packed: the way
/// holding the flow + 1 (0: not there) in bits 0–7; else that victim way
/// (the highest score: rank, then age) in bits 8–11, the number of free
/// ways in bits 12–15 and the victim's score (rank << 30 | age in
/// `flow_seen` units) in bits 32–63. `u64::MAX`: no such bucket.
///
/// verifier: a global function (exported), verified once on its own for
/// any arguments, and whose result its callers see as an unknown number.
/// Inline, or as a static function verified at each call, the ways found
/// were constants on each path through the scans: every combination was a
/// state of its own for the rest of the program, past the verifier's
/// 1M-instruction budget, and the scans' registers pushed the IPv4
/// program's combined stack past 512 bytes.
#[no_mangle]
#[inline(never)]
pub extern "C" fn xdplb_scan_bucket(index: u32, base: u32, tag: u64, seen: u32) -> u64 {
    let Some(bucket) = FLOWS.get_ptr(index) else {
        return u64::MAX;
    };
    let mut victim = base;
    let mut best = 0u32;
    let mut free = 0u32;
    for way in 0..FLOW_WAYS {
        // SAFETY: a valid map value; `way` < FLOW_WAYS. Other CPUs may be
        // writing the slot: a torn read is judged like any other (at worst
        // one flow re-steered once, never a wrong backend: see `bound`).
        let slot = unsafe { &(*bucket).slots[way] };
        let word = slot.tag;
        if word & !FLOW_TAG_FLAGS == tag {
            return (base + way as u32) as u64 + 1;
        }
        let flags = (word & FLOW_TAG_FLAGS) as u16;
        let age = seen.wrapping_sub(slot.seen);
        let closed = flow_closed(flags);
        let rank = if word == 0 || (closed && ((age as u64) << FLOW_SEEN_SHIFT) > FLOW_LINGER_NS) {
            free += 1;
            RANK_FREE
        } else if closed {
            RANK_CLOSED
        } else if flow_established(flags) {
            RANK_ESTABLISHED
        } else {
            RANK_UNESTABLISHED
        };
        let score = rank << 30 | age.min(MAX_AGE);
        // Strictly higher: on a tie the earlier way wins.
        if score > best {
            best = score;
            victim = base + way as u32;
        }
    }
    ((victim & 0xf) as u64) << 8 | ((free & 0xf) as u64) << 12 | (best as u64) << 32
}

/// Reads `key`'s two buckets once: whether the flow is there, and which
/// way a new entry would take.
#[inline(always)]
fn place<K: Flow>(key: &K, now: u64) -> Result<Place, GlobalCounter> {
    // verifier: volatile so the loaded values (set at load time) are used,
    // not the compile-time defaults folded in.
    let seed = unsafe { core::ptr::read_volatile(&FLOW_TAG_SEED) };
    let buckets = unsafe { core::ptr::read_volatile(&FLOW_BUCKETS) };
    let tag = key.tag(seed);
    let (a, b) = flow_bucket_pair(tag, buckets);
    let (Some(first), Some(second)) = (FLOWS.get_ptr(a), FLOWS.get_ptr(b)) else {
        return Err(GlobalCounter::DropInternal);
    };
    // Touch both lines of both buckets before scanning any: four
    // independent loads, so a new flow's cache misses overlap instead of
    // coming one after another (measured: 397 ns net per new flow at 1M
    // entries without, docs/BENCHMARKS.md).
    // SAFETY: valid map values; the loaded words are not used.
    unsafe {
        core::ptr::read_volatile(&(*first).slots[0].tag);
        core::ptr::read_volatile(&(*first).slots[FLOW_WAYS / 2].tag);
        core::ptr::read_volatile(&(*second).slots[0].tag);
        core::ptr::read_volatile(&(*second).slots[FLOW_WAYS / 2].tag);
    }
    let seen = flow_seen(now);
    let in_first = xdplb_scan_bucket(a, 0, tag, seen);
    if in_first == u64::MAX {
        return Err(GlobalCounter::DropInternal);
    }
    let (mut hit, mut victim) = (NO_WAY, (in_first >> 8) as u32 & 0xf);
    if in_first & 0xff != 0 {
        hit = ((in_first & 0xff) as u32 - 1) & 0xf;
    } else {
        let in_second = xdplb_scan_bucket(b, FLOW_WAYS as u32, tag, seen);
        if in_second == u64::MAX {
            return Err(GlobalCounter::DropInternal);
        }
        if in_second & 0xff != 0 {
            hit = ((in_second & 0xff) as u32 - 1) & 0xf;
        } else {
            // A new flow goes to the bucket with more free ways ("two
            // choices": buckets fill evenly), else over the better of the
            // two buckets' victims (rank, then age).
            let free = |scan: u64| (scan >> 12) & 0xf;
            let second_wins = if free(in_first) | free(in_second) != 0 {
                free(in_second) > free(in_first)
            } else {
                in_second >> 32 > in_first >> 32
            };
            if second_wins {
                victim = (in_second >> 8) as u32 & 0xf;
            }
        }
    }
    // Ways 0..FLOW_WAYS are the first bucket's, the rest the second's.
    trace::place((a, b), hit, victim);
    Ok(Place {
        buckets: (a, b),
        tag,
        hit,
        victim,
    })
}

/// Ring size the rings were sized for at load (`ring_size` in the config).
/// Set by user space with `override_global` before the program loads.
#[no_mangle]
static RING_SIZE: u32 = lb_common::limits::DEFAULT_RING_SIZE;

/// This CPU's share of `[dataplane] max_flow_inserts_per_sec` (the host's
/// budget divided by its CPUs, so all of them together insert at most
/// that; 0 = no cap). Set by user space with `override_global` before the
/// program loads.
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
    let place = place(key, now)?;
    let syn = !udp && tcp & (TCP_FLAG_SYN | TCP_FLAG_ACK) == TCP_FLAG_SYN;
    if syn {
        return select_syn(key, vip, now, &place);
    }
    let closing = closing_bits(tcp);
    let acked = if udp {
        FLOW_F_ACKED | FLOW_F_UDP
    } else if tcp & TCP_FLAG_ACK != 0 {
        FLOW_F_ACKED
    } else {
        0
    };
    // Flags a re-steered flow keeps in its new entry.
    let mut carried = 0;
    let mut way = place.victim;
    if let Some(hit) = place.hit() {
        way = hit;
        match pinned(place.slot(hit)?, vip, closing | acked, now)? {
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
        trace::insert_way(way);
        Some((carried | closing | acked, place.tag, place.slot(way)?))
    } else {
        None
    };
    from_ring(key, vip, now, pin)
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
    flow: &mut FlowSlot,
    vip: &VipMeta,
    bits: u16,
    now: u64,
) -> Result<Pinned, GlobalCounter> {
    let word = flow.tag;
    let flags = (word & FLOW_TAG_FLAGS) as u16;
    let age = flow.age_ns(now);
    trace::entry(flow.backend, flags);
    if flow_closed(flags) && age > FLOW_LINGER_NS {
        trace::pinned(EXPLAIN_PIN_CLOSED);
        return Ok(Pinned::Gone);
    }
    if flow_idle(vip.flow_idle_ms, age) {
        count(GlobalCounter::FlowIdled);
        trace::pinned(EXPLAIN_PIN_IDLE);
        return Ok(Pinned::Gone);
    }
    let backend = flow.backend;
    match resolve(backend, vip)? {
        None => {
            count(GlobalCounter::FlowMisses);
            trace::pinned(EXPLAIN_PIN_STALE);
            Ok(Pinned::Gone)
        }
        Some(meta) if meta.state == BACKEND_DOWN => {
            count(GlobalCounter::Resteered);
            trace::pinned(EXPLAIN_PIN_DOWN);
            Ok(Pinned::Resteer(flags))
        }
        Some(meta) => {
            trace::pinned(EXPLAIN_PIN_KEEP);
            let more = flags | bits;
            let seen = flow_seen(now);
            if !trace::WRITES {
                // The entry as it is: explain writes nothing.
            } else if more != flags {
                flow.seen = seen;
                flow.tag = word | more as u64;
            } else if flow.seen != seen {
                // Its ~1 ms unit: recency decides evictions, and a live
                // flow must not look older than what came after it.
                flow.seen = seen;
            }
            Ok(Pinned::Keep(Choice {
                backend: ref_slot(backend),
                meta: *meta,
                new_flow: false,
            }))
        }
    }
}

/// A SYN: usually a new flow, written over the bucket's victim. If its
/// 4-tuple is there, the entry decides: a live pin stays (a retransmitted
/// or spoofed SYN must not move a connection); a closed connection's
/// entry is replaced by the new one.
#[inline(always)]
fn select_syn<K: Flow>(
    key: &K,
    vip: &VipMeta,
    now: u64,
    place: &Place,
) -> Result<Choice, GlobalCounter> {
    let mut way = place.victim;
    if let Some(hit) = place.hit() {
        let flow = place.slot(hit)?;
        if !flow_closed(flow.flags()) {
            if let Pinned::Keep(kept) = pinned(flow, vip, 0, now)? {
                return Ok(kept);
            }
        } else {
            trace::entry(flow.backend, flow.flags());
            trace::pinned(EXPLAIN_PIN_REOPENED);
        }
        // Over, stale or down: the new connection takes the entry.
        way = hit;
    }
    trace::insert_way(way);
    from_ring(key, vip, now, Some((0, place.tag, place.slot(way)?)))
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

/// The ring's backend for `key`; if `pin` is given (flags, tag, slot) and
/// the insert rate allows, recorded in that slot.
#[inline(always)]
pub fn from_ring<K: Flow>(
    key: &K,
    vip: &VipMeta,
    now: u64,
    pin: Option<(u16, u64, &mut FlowSlot)>,
) -> Result<Choice, GlobalCounter> {
    // verifier: volatile, as above.
    let ring_size = unsafe { core::ptr::read_volatile(&RING_SIZE) };
    if ring_size == 0 {
        return Err(GlobalCounter::DropInternal);
    }
    let idx = ring_slot_index(vip.index, vip.ring_slot & 1, ring_size, key.hash());
    if !trace::WRITES {
        if let Some(&r) = RINGS.get(idx) {
            trace::ring(idx, r);
        }
    }
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
    let new_flow = pin.is_some();
    if let Some((flags, tag, slot)) = pin {
        if !trace::WRITES {
            // The insert cap's window is the data plane's own (per CPU,
            // not shared): explain cannot see it, and assumes room.
            count(GlobalCounter::FlowInserts);
        } else if may_insert(now) {
            // The tag last: a reader on another CPU that matches it finds
            // the new backend (x86 keeps stores in order). Two CPUs taking
            // one slot at once leave one flow unrecorded; its next packet
            // records it.
            slot.backend = r;
            slot.seen = flow_seen(now);
            slot.tag = tag | flags as u64;
            count(GlobalCounter::FlowInserts);
        }
    }
    Ok(Choice {
        backend: ref_slot(r),
        meta: *meta,
        new_flow,
    })
}

/// The backend a flow is on without touching the table: its entry if it
/// is still valid, else the ring's choice (for ICMP errors about it).
#[inline(always)]
pub fn peek<K: Flow>(key: &K, vip: &VipMeta) -> Result<Choice, GlobalCounter> {
    let place = place(key, 0)?;
    if let Some(hit) = place.hit() {
        let r = place.slot(hit)?.backend;
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
    from_ring(key, vip, 0, None)
}

/// Records what a backend's SYN-ACK, FIN or RST (with TCP flags `tcp`)
/// tells about the flow it belongs to; replies look the table up only for
/// these.
#[inline(always)]
pub fn note_backend<K: Flow>(key: &K, tcp: u8, now: u64) {
    let bits = if tcp & TCP_FLAG_RST != 0 {
        FLOW_F_RESET
    } else if tcp & TCP_FLAG_FIN != 0 {
        lb_common::FLOW_F_BACKEND_FIN
    } else {
        lb_common::FLOW_F_REPLIED
    } as u64;
    let Ok(place) = place(key, now) else {
        return;
    };
    if let Some(Ok(flow)) = place.hit().map(|hit| place.slot(hit)) {
        let word = flow.tag;
        trace::entry(flow.backend, flow.flags());
        if trace::WRITES && word & bits != bits {
            flow.seen = flow_seen(now);
            flow.tag = word | bits;
        }
    }
}
