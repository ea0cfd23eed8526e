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
//!
//! Other CPUs (and user space's census) write the same slots at the same
//! time. Every write of a tag word is a compare-and-swap against the word
//! this CPU judged, inserts claim their way first, and a pin's backend is
//! used only if its tag held still while it was read (`lb_common::FLOW_CLAIMED`
//! says how): a tag is never paired with another flow's backend, and a
//! stale flag update never brings back a flow whose slot was reused.
use core::intrinsics::{atomic_cxchg, AtomicOrdering};

use lb_common::{
    flow_bucket_pair, flow_closed, flow_established, flow_hash, flow_hash6, flow_idle, flow_seen,
    flow_tag, flow_tag6, flow_tag_ring_hash, limits::FLOW_LINGER_NS, ref_generation, ref_slot,
    ring_slot_index, BackendMeta, FlowBucket, FlowKey, FlowKey6, FlowSlot, GlobalCounter, VipMeta,
    BACKEND_DOWN, BACKEND_FREE, EXPLAIN_PIN_CLOSED, EXPLAIN_PIN_DOWN, EXPLAIN_PIN_IDLE,
    EXPLAIN_PIN_KEEP, EXPLAIN_PIN_REOPENED, EXPLAIN_PIN_STALE, FLOW_CLAIMED, FLOW_F_ACKED,
    FLOW_F_CLOSING, FLOW_F_RESET, FLOW_F_UDP, FLOW_SEEN_SHIFT, FLOW_TAG_FLAGS, FLOW_WAYS,
    IPPROTO_UDP, NO_BACKEND,
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
    /// The victim's tag word as read after the scans chose it (without a
    /// hit; else 0): an insert claims the way only if it still holds this.
    victim_word: u64,
}

const NO_WAY: u32 = u32::MAX;

impl Place {
    #[inline(always)]
    fn hit(&self) -> Option<u32> {
        (self.hit != NO_WAY).then_some(self.hit)
    }

    /// The slot of `way`, or `None` for [`NO_WAY`] (no victim judged).
    #[inline(always)]
    fn way(&self, way: u32) -> Result<Option<&'static mut FlowSlot>, GlobalCounter> {
        if way == NO_WAY {
            return Ok(None);
        }
        self.slot(way).map(Some)
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

/// A slot's tag word as it is now (volatile: each read is a load, in
/// program order, which x86 keeps for loads).
#[inline(always)]
fn tag_word(slot: &FlowSlot) -> u64 {
    // SAFETY: a valid, aligned map value.
    unsafe { core::ptr::read_volatile(&slot.tag) }
}

/// Compare-and-swap of a slot's tag word (BPF_CMPXCHG, a full barrier):
/// whether it held `old` and now holds `new`.
#[inline(always)]
fn swap_tag(slot: &mut FlowSlot, old: u64, new: u64) -> bool {
    // SAFETY: a valid map value, 8-aligned; every CPU writes the word
    // atomically (stores of a whole word, or this).
    unsafe {
        atomic_cxchg::<u64, { AtomicOrdering::SeqCst }, { AtomicOrdering::SeqCst }>(
            &mut slot.tag,
            old,
            new,
        )
    }
    .1
}

/// The flow's backend reference in `slot`, if the slot holds the flow of
/// `tag` before and after the read: a reader that matched the tag and then
/// read a backend another CPU's insert had just written would otherwise
/// pair this flow with another's backend.
#[inline(always)]
fn backend_of(slot: &FlowSlot, tag: u64) -> Option<u32> {
    // SAFETY: a valid map value.
    let backend = unsafe { core::ptr::read_volatile(&slot.backend) };
    if tag_word(slot) & !FLOW_TAG_FLAGS != tag {
        count(GlobalCounter::FlowRaced);
        return None;
    }
    Some(backend)
}

/// How much a new flow would rather take a way: free (empty, or closed
/// past its linger) first, then an entry that never saw both directions,
/// then a closed one lingering, last an established flow.
const RANK_FREE: u64 = 3;
const RANK_UNESTABLISHED: u64 = 2;
const RANK_CLOSED: u64 = 1;
const RANK_ESTABLISHED: u64 = 0;

/// The flag bits a rank depends on, packed into 5 bits: `FLOW_F_CLOSING`,
/// `_BACKEND_FIN`, `_RESET`, `_ACKED` as they are (bits 0–3),
/// `FLOW_F_REPLIED` (bit 5) moved to bit 4 (`FLOW_F_UDP`, bit 4, ranks
/// nothing).
#[inline(always)]
const fn rank_index(word: u64) -> u64 {
    (word & 0xf) | ((word >> 1) & 0x10)
}

/// The rank of an entry with these flags that is not free.
const fn rank_of(flags: u16) -> u64 {
    if flow_closed(flags) {
        RANK_CLOSED
    } else if flow_established(flags) {
        RANK_ESTABLISHED
    } else {
        RANK_UNESTABLISHED
    }
}

/// [`rank_of`] for each [`rank_index`]: two bits each. One shift of a
/// constant instead of a branch per flag — the victim scan judges 16 ways
/// for every new flow.
const RANK_BY_FLAGS: u64 = {
    let mut table = 0u64;
    let mut index = 0u64;
    while index < 32 {
        let flags = ((index & 0xf) | ((index & 0x10) << 1)) as u16;
        table |= rank_of(flags) << (2 * index);
        index += 1;
    }
    table
};
/// Proof at build time: every flags byte a live entry can carry (bits
/// 0–5) ranks through the table (via `rank_index`) as through `rank_of`.
const _: () = {
    let mut flags = 0u16;
    while flags < 64 {
        assert!((RANK_BY_FLAGS >> (rank_index(flags as u64) * 2)) & 3 == rank_of(flags));
        flags += 1;
    }
};

/// A closed flow's linger in `flow_seen` units: older than this, its way
/// is free (`age << FLOW_SEEN_SHIFT > FLOW_LINGER_NS`, without the shift).
const LINGER_SEEN: u64 = FLOW_LINGER_NS >> FLOW_SEEN_SHIFT;

/// What `judge` adds to a slot's age (see there): 2^30, so that
/// `LINGER_SEEN + AGE_BIAS` still fits a BPF compare's 32-bit immediate
/// (2^31 needed a 64-bit load for each way's compare).
const AGE_BIAS: u64 = 1 << 30;

/// How `xdplb_scan_buckets` reads a flow's buckets.
/// Tags only: nothing will be inserted (no victim judged).
const SCAN_TAGS: u32 = 0;
/// Both buckets' tags first, then (on a miss) every way judged as a
/// victim: for packets that are almost always of a flow the table holds.
const SCAN_TAGS_THEN_JUDGE: u32 = 1;
/// Tags and victims in one pass: for SYNs, almost always of a new flow.
const SCAN_JUDGE: u32 = 2;

/// `xdplb_scan_buckets`' result: a victim was judged (bits 8–11 name it).
const SCAN_VICTIM: u64 = 1 << 12;

/// The way of `bucket` (numbered from `base`) holding `tag`, + 1.
#[inline(always)]
fn find(bucket: &FlowBucket, base: u64, tag: u64) -> Option<u64> {
    for way in 0..FLOW_WAYS {
        if bucket.slots[way].tag & !FLOW_TAG_FLAGS == tag {
            return Some(base + way as u64 + 1);
        }
    }
    None
}

/// Scans `bucket` (its ways numbered from `base`) for `tag` and for the
/// way a new flow would take. Returns, packed: the way holding the flow
/// + 1 (0: not there) in bits 0–7; else that victim way (the highest
/// score: rank, then age) in bits 8–11, the number of free ways in bits
/// 12–15 and the victim's score (rank << 32 | age in `flow_seen` units)
/// in bits 16–49.
#[inline(always)]
fn judge(bucket: &FlowBucket, base: u64, tag: u64, seen: u64) -> u64 {
    // `flow_seen` units wrap at 32 bits, and another CPU may stamp a slot
    // after this one read the clock: a slot's age is biased by
    // `AGE_BIAS` — a slot stamped now is 2^30, older ones more, one
    // stamped ahead of this CPU's clock (by up to 2^30 units, 13 days)
    // less: the freshest, not the oldest of all.
    let from = seen + AGE_BIAS;
    let mut victim = 0u64;
    let mut best = 0u64;
    let mut free = 0u64;
    // Unrolled (LLVM keeps the loop, which then spills its counters): each
    // way's offset is a constant.
    macro_rules! judge_ways {
        ($($way:literal)*) => {$('way: {
            // Other CPUs may be writing the slot: a torn read is judged
            // like any other (at worst one flow re-steered once, never a
            // wrong backend: see `backend_of`).
            let slot = &bucket.slots[$way];
            let word = slot.tag;
            if word & !FLOW_TAG_FLAGS == tag {
                // Here (or published by another CPU since the tags pass).
                return base + $way + 1;
            }
            if word == FLOW_CLAIMED {
                // Another CPU is writing it: no victim (were every way
                // claimed, the insert finds the claim and records nothing).
                break 'way;
            }
            // Biased (see `from`): ages compare as they should, at no
            // cost per way.
            let age = from.wrapping_sub(u64::from(slot.seen)) & u64::from(u32::MAX);
            let rank = if word == 0 {
                free += 1;
                RANK_FREE
            } else {
                let rank = (RANK_BY_FLAGS >> (rank_index(word) * 2)) & 3;
                if rank == RANK_CLOSED && age > LINGER_SEEN + AGE_BIAS {
                    free += 1;
                    RANK_FREE
                } else {
                    rank
                }
            };
            let score = rank << 32 | age;
            // Strictly higher: on a tie the earlier way wins.
            if score > best {
                best = score;
                victim = $way;
            }
        })*};
    }
    const _: () = assert!(FLOW_WAYS == 8);
    judge_ways!(0 1 2 3 4 5 6 7);
    ((base + victim) & 0xf) << 8 | (free & 0xf) << 12 | best << 16
}

/// [`judge`] of bucket `index` of `FLOWS`, as a global function: its
/// result is an unknown number to `xdplb_scan_buckets`, which judges the
/// other bucket inline (verifier: two inline judgements made every pair
/// of their outcomes a state, 70k more instructions verified per program).
/// `u64::MAX`: no such bucket.
#[no_mangle]
#[inline(never)]
pub extern "C" fn xdplb_judge_bucket(index: u32, base: u32, tag: u64, seen: u32) -> u64 {
    let Some(bucket) = FLOWS.get_ptr(index) else {
        return u64::MAX;
    };
    // SAFETY: a valid map value for the program's run.
    judge(unsafe { &*bucket }, u64::from(base), tag, u64::from(seen))
}

/// Scans buckets `first` and `second` of `FLOWS` (ways 0..FLOW_WAYS are
/// the first's, the rest the second's) for `tag`, and unless `mode` is
/// [`SCAN_TAGS`] for the way a new flow would take. Returns, packed: the
/// way holding the flow + 1 (0: not there) in bits 0–7; else, with
/// [`SCAN_VICTIM`], the victim way in bits 8–11. `u64::MAX`: no such
/// bucket.
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
pub extern "C" fn xdplb_scan_buckets(
    first: u32,
    second: u32,
    tag: u64,
    seen: u32,
    mode: u32,
) -> u64 {
    let (Some(a), Some(b)) = (FLOWS.get_ptr(first), FLOWS.get_ptr(second)) else {
        return u64::MAX;
    };
    // SAFETY: valid map values for the program's run.
    let (a, b) = unsafe { (&*a, &*b) };
    // Touch both lines of both buckets before scanning any: four
    // independent loads, so a new flow's cache misses overlap instead of
    // coming one after another (measured: 397 ns net per new flow at 1M
    // entries without, docs/BENCHMARKS.md). Here, where the buckets are
    // looked up anyway: the caller looked them up a second time for it.
    // SAFETY: the loaded words are not used.
    unsafe {
        core::ptr::read_volatile(&a.slots[0].tag);
        core::ptr::read_volatile(&a.slots[FLOW_WAYS / 2].tag);
        core::ptr::read_volatile(&b.slots[0].tag);
        core::ptr::read_volatile(&b.slots[FLOW_WAYS / 2].tag);
    }
    let ways = FLOW_WAYS as u64;
    if mode != SCAN_JUDGE {
        // Both buckets' tags alone first: an established flow (almost
        // every packet), in either bucket, is found without judging a way
        // as a victim.
        if let Some(hit) = find(a, 0, tag).or_else(|| find(b, ways, tag)) {
            return hit;
        }
        if mode == SCAN_TAGS {
            return 0;
        }
    }
    // u64 throughout (`judge`): these programs are built without BPF's
    // 32-bit instructions, so every u32 compared costs two shifts to
    // zero-extend it.
    let in_first = judge(a, 0, tag, u64::from(seen));
    if in_first & 0xff != 0 {
        return in_first & 0xff;
    }
    let in_second = xdplb_judge_bucket(second, FLOW_WAYS as u32, tag, seen);
    if in_second == u64::MAX || in_second & 0xff != 0 {
        return in_second;
    }
    // A new flow goes to the bucket with more free ways ("two choices":
    // buckets fill evenly), else over the better of the two buckets'
    // victims (rank, then age).
    let free = |scan: u64| (scan >> 12) & 0xf;
    let second_wins = if free(in_first) | free(in_second) != 0 {
        free(in_second) > free(in_first)
    } else {
        in_second >> 16 > in_first >> 16
    };
    let winner = if second_wins { in_second } else { in_first };
    winner & 0xf00 | SCAN_VICTIM
}

/// Reads `key`'s two buckets once (as `mode` says, see `xdplb_scan_buckets`):
/// whether the flow is there, and, unless [`SCAN_TAGS`], which way a new
/// entry would take (else the victim is [`NO_WAY`]: for lookups that never
/// insert, and for packets over the insert cap, which need only the tags —
/// whether the flow is pinned).
#[inline(always)]
fn place<K: Flow>(key: &K, now: u64, mode: u32) -> Result<Place, GlobalCounter> {
    // verifier: volatile so the loaded values (set at load time) are used,
    // not the compile-time defaults folded in.
    let seed = unsafe { core::ptr::read_volatile(&FLOW_TAG_SEED) };
    let buckets = unsafe { core::ptr::read_volatile(&FLOW_BUCKETS) };
    let tag = key.tag(seed);
    let (a, b) = flow_bucket_pair(tag, buckets);
    let scan = xdplb_scan_buckets(a, b, tag, flow_seen(now), mode);
    if scan == u64::MAX {
        return Err(GlobalCounter::DropInternal);
    }
    let (mut hit, mut victim) = (NO_WAY, NO_WAY);
    if scan & 0xff != 0 {
        hit = ((scan & 0xff) as u32 - 1) & 0xf;
    } else if scan & SCAN_VICTIM != 0 {
        victim = (scan >> 8) as u32 & 0xf;
    }
    // Ways 0..FLOW_WAYS are the first bucket's, the rest the second's.
    trace::place((a, b), hit, victim);
    let mut place = Place {
        buckets: (a, b),
        tag,
        hit,
        victim,
        victim_word: 0,
    };
    if victim != NO_WAY {
        place.victim_word = tag_word(place.slot(victim)?);
    }
    Ok(place)
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
    /// The flow's ring hash (`lb_common::flow_hash`), read off its tag.
    pub hash: u32,
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
    let mode = if trace::WRITES && !insert_budget(now) {
        // Over the insert cap nothing is inserted: no victim to judge.
        SCAN_TAGS
    } else if syn {
        SCAN_JUDGE
    } else {
        SCAN_TAGS_THEN_JUDGE
    };
    let place = place(key, now, mode)?;
    if syn {
        return select_syn(vip, now, &place);
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
    let (mut way, mut judged) = (place.victim, place.victim_word);
    if let Some(hit) = place.hit() {
        way = hit;
        match pinned(place.slot(hit)?, place.tag, vip, closing | acked, now)? {
            Pinned::Keep(choice) => return Ok(choice),
            Pinned::Resteer(flags, word) => (carried, judged) = (flags, word),
            Pinned::Gone(word) => judged = word,
        }
    } else if !udp {
        count(GlobalCounter::FlowMisses);
    }
    // A FIN or RST the table does not know ends nothing worth remembering
    // (Katran never records RSTs): steer it, insert nothing.
    let pin = if closing == 0 || carried != 0 {
        trace::insert_way(way);
        Some(Pin {
            flags: carried | closing | acked,
            tag: place.tag,
            judged,
            slot: place.way(way)?,
        })
    } else {
        None
    };
    from_ring(flow_tag_ring_hash(place.tag), vip, now, pin)
}

/// What an existing entry says about a packet of its flow. `Resteer` and
/// `Gone` carry the tag word judged: the new entry replaces the slot only
/// if it still holds that word.
enum Pinned {
    /// Still its backend's: use it.
    Keep(Choice),
    /// Its backend is down: select again, keeping these flags.
    Resteer(u16, u64),
    /// Over (closed and lingered out, or a SYN after close), stale (a
    /// slot freed or reused since), or taken by another flow while it was
    /// read: a new flow.
    Gone(u64),
}

/// What the entry in `flow`, found holding the flow of `tag`, says about
/// a packet adding flag `bits`.
#[inline(always)]
fn pinned(
    flow: &mut FlowSlot,
    tag: u64,
    vip: &VipMeta,
    bits: u16,
    now: u64,
) -> Result<Pinned, GlobalCounter> {
    let word = tag_word(flow);
    if word & !FLOW_TAG_FLAGS != tag {
        // Taken by another flow since the scan.
        count(GlobalCounter::FlowRaced);
        return Ok(Pinned::Gone(word));
    }
    let flags = (word & FLOW_TAG_FLAGS) as u16;
    let age = flow.age_ns(now);
    trace::entry(flow.backend, flags);
    if flow_closed(flags) && age > FLOW_LINGER_NS {
        trace::pinned(EXPLAIN_PIN_CLOSED);
        return Ok(Pinned::Gone(word));
    }
    if flow_idle(vip.flow_idle_ms, age) {
        count(GlobalCounter::FlowIdled);
        trace::pinned(EXPLAIN_PIN_IDLE);
        return Ok(Pinned::Gone(word));
    }
    let Some(backend) = backend_of(flow, tag) else {
        return Ok(Pinned::Gone(word));
    };
    match resolve(backend, vip)? {
        None => {
            count(GlobalCounter::FlowMisses);
            trace::pinned(EXPLAIN_PIN_STALE);
            Ok(Pinned::Gone(word))
        }
        Some(meta) if meta.state == BACKEND_DOWN => {
            count(GlobalCounter::Resteered);
            trace::pinned(EXPLAIN_PIN_DOWN);
            Ok(Pinned::Resteer(flags, word))
        }
        Some(meta) => {
            trace::pinned(EXPLAIN_PIN_KEEP);
            let more = flags | bits;
            let seen = flow_seen(now);
            if !trace::WRITES {
                // The entry as it is: explain writes nothing.
            } else if more != flags {
                // Against the word judged: if another CPU reused the slot
                // since, its flow keeps its word (no stale tag comes
                // back); if it only added flags, ours wait for the next
                // packet.
                flow.seen = seen;
                if !swap_tag(flow, word, word | more as u64) {
                    count(GlobalCounter::FlowRaced);
                }
            } else if flow.seen != seen {
                // Its ~1 ms unit: recency decides evictions, and a live
                // flow must not look older than what came after it.
                flow.seen = seen;
            }
            Ok(Pinned::Keep(Choice {
                backend: ref_slot(backend),
                meta: *meta,
                new_flow: false,
                hash: flow_tag_ring_hash(tag),
            }))
        }
    }
}

/// A SYN: usually a new flow, written over the bucket's victim. If its
/// 4-tuple is there, the entry decides: a live pin stays (a retransmitted
/// or spoofed SYN must not move a connection); a closed connection's
/// entry is replaced by the new one.
#[inline(always)]
fn select_syn(vip: &VipMeta, now: u64, place: &Place) -> Result<Choice, GlobalCounter> {
    let (mut way, mut judged) = (place.victim, place.victim_word);
    if let Some(hit) = place.hit() {
        let flow = place.slot(hit)?;
        judged = tag_word(flow);
        if !flow_closed((judged & FLOW_TAG_FLAGS) as u16) {
            match pinned(flow, place.tag, vip, 0, now)? {
                Pinned::Keep(kept) => return Ok(kept),
                Pinned::Resteer(_, word) | Pinned::Gone(word) => judged = word,
            }
        } else {
            trace::entry(flow.backend, flow.flags());
            trace::pinned(EXPLAIN_PIN_REOPENED);
        }
        // Over, stale or down: the new connection takes the entry.
        way = hit;
    }
    trace::insert_way(way);
    let pin = Pin {
        flags: 0,
        tag: place.tag,
        judged,
        slot: place.way(way)?,
    };
    from_ring(flow_tag_ring_hash(place.tag), vip, now, Some(pin))
}

/// Whether this CPU's insert budget has room this second (without taking
/// any: `may_insert` does, at the insert). One CPU's window, read twice in
/// one run of the program: both say the same.
#[inline(always)]
fn insert_budget(now: u64) -> bool {
    // verifier: volatile, as in `may_insert`.
    let cap = unsafe { core::ptr::read_volatile(&MAX_FLOW_INSERTS_PER_SEC) } as u64;
    if cap == 0 {
        return true;
    }
    let Some(w) = INSERT_RATE.get_ptr(0) else {
        return true;
    };
    // SAFETY: a per-CPU slot only this CPU writes while we run.
    let w = unsafe { &*w };
    now.wrapping_sub(w.start_ns) >= 1_000_000_000 || w.inserts < cap
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

/// Where a new flow is to be recorded.
pub struct Pin<'a> {
    /// Its `FLOW_F_*` bits.
    flags: u16,
    /// Its tag.
    tag: u64,
    /// The tag word the way was judged by: the insert claims the way only
    /// if it still holds this.
    judged: u64,
    /// `None`: no way was judged, as the insert budget was spent.
    slot: Option<&'a mut FlowSlot>,
}

/// The ring's backend for the flow of ring hash `hash` (its tag's high
/// word: computed once, with the tag); if `pin` is given and the insert
/// rate allows, recorded there.
#[inline(always)]
fn from_ring(
    hash: u32,
    vip: &VipMeta,
    now: u64,
    pin: Option<Pin>,
) -> Result<Choice, GlobalCounter> {
    // verifier: volatile, as above.
    let ring_size = unsafe { core::ptr::read_volatile(&RING_SIZE) };
    if ring_size == 0 {
        return Err(GlobalCounter::DropInternal);
    }
    let idx = ring_slot_index(vip.index, vip.ring_slot & 1, ring_size, hash);
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
    if let Some(pin) = pin {
        if !trace::WRITES {
            // The insert cap's window is the data plane's own (per CPU,
            // not shared): explain cannot see it, and assumes room.
            count(GlobalCounter::FlowInserts);
        } else if pin.slot.is_none() {
            count(GlobalCounter::FlowInsertsCapped);
        } else if may_insert(now) {
            insert(pin, r, now);
        }
    }
    Ok(Choice {
        backend: ref_slot(r),
        meta: *meta,
        new_flow,
        hash,
    })
}

/// Records a flow pinned to backend reference `r`: claims the way from
/// the word it was judged by, writes backend and seen, then publishes the
/// tag (the tag last: a reader that matches it finds the new backend; x86
/// keeps stores in order, and the claim's cmpxchg is a full barrier). A
/// claim that fails (another CPU inserted, flagged or reaped the way
/// since, or is writing it now) records nothing: the flow's next packet
/// does.
#[inline(always)]
fn insert(pin: Pin, r: u32, now: u64) {
    let Pin {
        flags,
        tag,
        judged,
        slot,
    } = pin;
    let Some(slot) = slot else {
        return;
    };
    if judged == FLOW_CLAIMED || !swap_tag(slot, judged, FLOW_CLAIMED) {
        count(GlobalCounter::FlowRaced);
        return;
    }
    // SAFETY: a valid map value this CPU alone writes until the tag is
    // published (others' plain `seen` refreshes aside, which are harmless).
    unsafe {
        core::ptr::write_volatile(&mut slot.backend, r);
        core::ptr::write_volatile(&mut slot.seen, flow_seen(now));
        core::ptr::write_volatile(&mut slot.tag, tag | flags as u64);
    }
    count(GlobalCounter::FlowInserts);
}

/// The backend a flow is on without touching the table: its entry if it
/// is still valid, else the ring's choice (for ICMP errors about it).
#[inline(always)]
pub fn peek<K: Flow>(key: &K, vip: &VipMeta) -> Result<Choice, GlobalCounter> {
    let place = place(key, 0, SCAN_TAGS)?;
    if let Some(hit) = place.hit() {
        let slot = place.slot(hit)?;
        let r = if tag_word(slot) & !FLOW_TAG_FLAGS == place.tag {
            backend_of(slot, place.tag).unwrap_or(NO_BACKEND)
        } else {
            NO_BACKEND
        };
        if r == NO_BACKEND {
            return from_ring(flow_tag_ring_hash(place.tag), vip, 0, None);
        }
        if let Some(meta) = resolve(r, vip)? {
            if meta.state != BACKEND_DOWN {
                return Ok(Choice {
                    backend: ref_slot(r),
                    meta: *meta,
                    new_flow: false,
                    hash: flow_tag_ring_hash(place.tag),
                });
            }
        }
    }
    from_ring(flow_tag_ring_hash(place.tag), vip, 0, None)
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
    let Ok(place) = place(key, now, SCAN_TAGS) else {
        return;
    };
    if let Some(Ok(flow)) = place.hit().map(|hit| place.slot(hit)) {
        let word = tag_word(flow);
        trace::entry(flow.backend, flow.flags());
        // Only the flow's own word, and by compare-and-swap against it:
        // a slot reused since keeps its new flow's word.
        if trace::WRITES && word & !FLOW_TAG_FLAGS == place.tag && word & bits != bits {
            flow.seen = flow_seen(now);
            if !swap_tag(flow, word, word | bits) {
                count(GlobalCounter::FlowRaced);
            }
        }
    }
}
