//! Every map of the data plane, in one place. Layouts come from `lb-common`;
//! sizes from `lb_common::limits`. Maps marked `pinned` live under the pin
//! path and survive the controller: a restarted `xdplb run` adopts them.
use aya_ebpf::{
    bindings::BPF_F_NO_COMMON_LRU,
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray},
};
use lb_common::{
    limits::{DEFAULT_FLOW_TABLE_SIZE, DEFAULT_RING_SIZE, FIB_CACHE_SIZE, MAX_BACKENDS, MAX_VIPS},
    rings_len, BackendCounters, BackendMeta, FibEntry, FlowEntry, FlowKey, GlobalCounter, L4Addr,
    Name, ReplyEntry, VipCounters, VipMeta, NAMES_LEN,
};

/// VIP endpoint → its index and live ring slot.
#[map]
pub static VIPS: HashMap<L4Addr, VipMeta> = HashMap::pinned(MAX_VIPS, 0);

/// Backend slot → address and state.
#[map]
pub static BACKENDS: Array<BackendMeta> = Array::pinned(MAX_BACKENDS, 0);

/// Backend endpoint → the VIP its replies are rewritten to.
#[map]
pub static REPLIES: HashMap<L4Addr, ReplyEntry> = HashMap::pinned(MAX_BACKENDS, 0);

/// Maglev rings, two per VIP (see `lb_common::RING_SLOTS`): backend slots.
/// Resized at load to the configured `ring_size`.
#[map]
pub static RINGS: Array<u32> = Array::pinned(rings_len(DEFAULT_RING_SIZE), 0);

/// Established flows: client 5-tuple → backend. One LRU shared by all CPUs,
/// because a veth or generic-XDP flow is not bound to one CPU the way an RSS
/// queue is. Its LRU lists are per CPU (BPF_F_NO_COMMON_LRU): inserting a
/// new flow then takes no global lock, which is most of a new flow's cost.
/// The price: each CPU evicts among the entries it inserted, so a CPU
/// that sees most new flows has about `flow_table_size / CPUs` of
/// recency to work with. Resized at load to `flow_table_size`.
#[map]
pub static FLOWS: LruHashMap<FlowKey, FlowEntry> =
    LruHashMap::pinned(DEFAULT_FLOW_TABLE_SIZE, BPF_F_NO_COMMON_LRU);

/// Next hops by destination address: `bpf_fib_lookup` is the most expensive
/// step of a forwarded packet, and its answer changes rarely.
#[map]
pub static FIB_CACHE: LruHashMap<u32, FibEntry> = LruHashMap::pinned(FIB_CACHE_SIZE, 0);

#[map]
pub static GLOBAL_STATS: PerCpuArray<u64> = PerCpuArray::pinned(GlobalCounter::COUNT, 0);

#[map]
pub static VIP_STATS: PerCpuArray<VipCounters> = PerCpuArray::pinned(MAX_VIPS, 0);

#[map]
pub static BACKEND_STATS: PerCpuArray<BackendCounters> = PerCpuArray::pinned(MAX_BACKENDS, 0);

/// Pool and backend names for user space (see `lb_common::Name`); the
/// program never reads it.
#[map]
pub static NAMES: Array<Name> = Array::pinned(NAMES_LEN, 0);

/// `lb_common::LAYOUT_VERSION` of these pins, written by user space; the
/// program never reads it.
#[map]
pub static VERSION: Array<u32> = Array::pinned(1, 0);
