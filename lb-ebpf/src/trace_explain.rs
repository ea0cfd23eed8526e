//! The explain object's build of `trace` (see `explain.rs`): nothing the
//! data plane shares is written — no flow entry, counter, FIB cache,
//! fragment or outbound entry — and each step is recorded in `EXPLAIN`
//! instead, for `xdplb explain` to read back after the test run.
use aya_ebpf::{macros::map, maps::Array};
use lb_common::{ExplainTrace, GlobalCounter, EXPLAIN_COUNTERS, EXPLAIN_NONE};

/// The program writes nothing shared: it records.
pub const WRITES: bool = false;

/// One trace, set to `ExplainTrace::EMPTY` by user space before each run.
/// Not pinned: each `xdplb explain` has its own.
#[map]
static EXPLAIN: Array<ExplainTrace> = Array::with_max_entries(1, 0);

#[inline(always)]
fn with(f: impl FnOnce(&mut ExplainTrace)) {
    if let Some(t) = EXPLAIN.get_ptr_mut(0) {
        // SAFETY: a map value valid while the program runs; explain runs
        // one frame at a time.
        f(unsafe { &mut *t })
    }
}

/// Entry point `bit` (`EXPLAIN_PROG_*`) ran.
#[inline(always)]
pub fn program(bit: u32) {
    with(|t| t.programs |= bit)
}

/// The program would have counted `counter`.
#[inline(always)]
pub fn counter(counter: GlobalCounter) {
    with(|t| {
        let n = t.n_counters;
        if (n as usize) < EXPLAIN_COUNTERS {
            t.counters[n as usize & (EXPLAIN_COUNTERS - 1)] = counter as u16;
            t.n_counters = n + 1;
        } else {
            t.counters_lost += 1;
        }
    })
}

/// The packet was counted for a VIP (`EXPLAIN_NONE`: not) and backend.
#[inline(always)]
pub fn counted(vip_index: u32, backend: u32, new_flow: bool) {
    with(|t| {
        if vip_index != EXPLAIN_NONE {
            t.vip_index = vip_index;
        }
        if backend != EXPLAIN_NONE {
            t.backend = backend;
        }
        t.new_flow |= new_flow as u32;
    })
}

/// A reply from backend slot `backend` was counted.
#[inline(always)]
pub fn reply(backend: u32) {
    with(|t| t.reply_backend = backend)
}

/// The flow table lookup: the two buckets, the way holding the flow (or
/// `EXPLAIN_NONE`) and the way a new entry would take.
#[inline(always)]
pub fn place(buckets: (u32, u32), hit: u32, victim: u32) {
    with(|t| {
        t.bucket_a = buckets.0;
        t.bucket_b = buckets.1;
        t.flow_hit = hit;
        t.flow_victim = victim;
    })
}

/// The hit entry's backend reference and flags.
#[inline(always)]
pub fn entry(backend_ref: u32, flags: u16) {
    with(|t| {
        t.entry_ref = backend_ref;
        t.entry_flags = flags as u32;
    })
}

/// What the entry said (`EXPLAIN_PIN_*`).
#[inline(always)]
pub fn pinned(outcome: u32) {
    with(|t| t.pinned = outcome)
}

/// A new entry would be written over `way`.
#[inline(always)]
pub fn insert_way(way: u32) {
    with(|t| t.insert_way = way)
}

/// The ring entry read.
#[inline(always)]
pub fn ring(index: u32, backend_ref: u32) {
    with(|t| {
        t.ring_index = index;
        t.ring_ref = backend_ref;
    })
}
