//! Every map of the data plane, in one place. Layouts come from `lb-common`;
//! sizes from `lb_common::limits`. Maps marked `pinned` live under the pin
//! path and survive the controller: a restarted `xdplb run` adopts them.
use aya_ebpf::{
    bindings::BPF_F_MMAPABLE,
    macros::map,
    maps::{Array, DevMapHash, HashMap, LruHashMap, PerCpuArray},
};
use lb_common::{
    flow_buckets,
    limits::{
        DEFAULT_FLOW_TABLE_SIZE, DEFAULT_RING_SIZE, FIB_CACHE_SIZE, FRAG_TABLE_SIZE, MAX_BACKENDS,
        MAX_EXTRA_MACS, MAX_IFACES, MAX_LOCAL_ADDRS, MAX_VIPS, OUTBOUND_SIZE,
    },
    rings_len, Addr6, AnswerTokens, BackendCounters, BackendMeta, FibEntry, FlowBucket, FlowKey,
    FlowKey6, FragEntry, FragKey, FragKey6, GlobalCounter, IfaceMeta, L4Addr, L4Addr6, Name,
    RateWindow, ReplyEntry, ReplyEntry6, VipAddr, VipCounters, VipMeta, ADDR_FILTER_LEN,
    IFACE_SLOTS, NAMES_LEN,
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

/// Established flows of both families: a set-associative table of
/// [`FLOW_WAYS`](lb_common::FLOW_WAYS)-way buckets, each flow a 16-byte slot
/// keyed by a 64-bit tag of its 5-tuple (`lb_common::flow_tag`). A lookup
/// reads one bucket (two adjacent cache lines, fetched together) and a new
/// flow is written into the same bucket, over its least recently seen
/// slot: one cold bucket per new flow, where the kernel's LRU hash walks a
/// bucket, then an element, then its LRU lists and the evicted element's
/// bucket (735 ns net per new flow at 1M entries, against 400 wanted;
/// docs/BENCHMARKS.md). Eviction is per bucket, not global: with 8 ways a
/// live flow is pushed out only when 8 newer flows land in its bucket,
/// which at 100k flows in a 1M table does not happen (and the insert-rate
/// cap keeps a flood from doing it). BPF_F_MMAPABLE: the data starts on a
/// page, so buckets sit on their lines, and user space counts flows by
/// reading the mapping. Resized at load to `flow_table_size / FLOW_WAYS`.
#[map]
pub static FLOWS: Array<FlowBucket> =
    Array::pinned(flow_buckets(DEFAULT_FLOW_TABLE_SIZE), BPF_F_MMAPABLE);

/// Address prefilter: a bit per hashed IPv4 VIP address, per hashed IPv4
/// backend address, then the same for IPv6 (`lb_common::addr_filter_word`,
/// `addr_filter_word6`). Set by user space before the address's `VIPS`,
/// `VIP_ADDRS` or `REPLIES` entry (or their IPv6 twins), cleared only when
/// no entry needs the bit.
#[map]
pub static ADDR_FILTER: Array<u64> = Array::pinned(ADDR_FILTER_LEN, 0);

/// VIP addresses → their pools (`lb_common::VipAddr`): what a packet to a
/// VIP address that matches no pool gets, and whether an echo request is
/// answered.
#[map]
pub static VIP_ADDRS: HashMap<u32, VipAddr> = HashMap::pinned(MAX_VIPS, 0);

/// IPv4 datagrams whose first fragment went through: where their other
/// fragments go, and how they are rewritten. Pinned, so fragments in
/// flight survive a restart.
#[map]
pub static FRAGS: LruHashMap<FragKey, FragEntry> = LruHashMap::pinned(FRAG_TABLE_SIZE, 0);

/// Backend addresses → reply endpoints at them: a non-first fragment from
/// one (no ports to look up `REPLIES` by) is a reply.
#[map]
pub static REPLY_ADDRS: HashMap<u32, u32> = HashMap::pinned(MAX_BACKENDS, 0);

/// A fragment key and entry built here rather than on the stack, which the
/// IPv6 programs have little of (see `family`).
#[repr(C)]
pub struct FragScratch {
    pub key: FragKey6,
    pub key4: FragKey,
    pub entry: FragEntry,
}

#[map]
pub static FRAG_SCRATCH: PerCpuArray<FragScratch> = PerCpuArray::with_max_entries(1, 0);

/// Per CPU: outer IPv4 packets without DF sent, for their IDs (`family`).
#[map]
pub static TUNNEL_IDS: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);

/// This CPU's credit for answers the program makes itself
/// (`answers_per_sec`). Not pinned: a restarted program starts afresh.
#[map]
pub static ANSWER_TOKENS: PerCpuArray<AnswerTokens> = PerCpuArray::with_max_entries(1, 0);

/// The flow table's tag key (`lb_common::maps::FLOW_SEED`); written by
/// user space, which also hands it to the program as a global.
#[map]
pub static FLOW_SEED: Array<u64> = Array::pinned(1, 0);

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

/// Attached interfaces by ifindex → their MAC: frames addressed to another
/// MAC (promiscuous mode, a bridge port) are not ours to rewrite.
#[map]
pub static IFACES: Array<IfaceMeta> = Array::pinned(IFACE_SLOTS, 0);

/// TCP connections backends opened from their service endpoints (key:
/// backend → foreign, as the backend sends; value: when it was opened):
/// their packets are not replies to rewrite. Consulted only for
/// endpoints whose `REPLIES` entry has `REPLY_F_OPENS`.
#[map]
pub static OUTBOUND: LruHashMap<FlowKey, u64> = LruHashMap::pinned(OUTBOUND_SIZE, 0);

#[map]
pub static OUTBOUND6: LruHashMap<FlowKey6, u64> = LruHashMap::pinned(OUTBOUND_SIZE, 0);

/// More MACs of this host (`[dataplane] extra_macs`, `lb_common::mac_key`
/// → 1): a VRRP virtual MAC, a secondary MAC. Frames to them are ours on
/// every attached interface.
#[map]
pub static EXTRA_MACS: HashMap<u64, u32> = HashMap::pinned(MAX_EXTRA_MACS, 0);

/// Redirect targets: the attached interfaces. Redirecting through a DEVMAP
/// lets the kernel batch transmissions, and a target missing from it falls
/// back to XDP_PASS instead of a silent drop.
#[map]
pub static TX_PORTS: DevMapHash = DevMapHash::pinned(MAX_IFACES, 0);

/// This host's IPv4 addresses (network order → 1): traffic from a backend
/// to one of them is the controller's own (health checks, agents), not a
/// reply to rewrite.
#[map]
pub static LOCAL_ADDRS: HashMap<u32, u32> = HashMap::pinned(MAX_LOCAL_ADDRS, 0);

/// This CPU's flow-table inserts in the current second (the insert-rate
/// cap). Not pinned: a restarted program starts a fresh window.
#[map]
pub static INSERT_RATE: PerCpuArray<RateWindow> = PerCpuArray::with_max_entries(1, 0);

/// `lb_common::LAYOUT_VERSION` of these pins, written by user space; the
/// program never reads it.
#[map]
pub static VERSION: Array<u32> = Array::pinned(1, 0);

// IPv6: the same roles with 16-byte addresses, in maps of their own so the
// IPv4 path's keys and lookups stay as small as they were.

/// IPv6 VIP endpoint → its index and live ring slot (indices shared with
/// `VIPS`: one VIP index space, one `VIP_STATS`, one `RINGS`).
#[map]
pub static VIPS6: HashMap<L4Addr6, VipMeta> = HashMap::pinned(MAX_VIPS, 0);

/// Backend slot → its IPv6 address, for slots of IPv6 pools (their state,
/// port and generation stay in `BACKENDS`).
#[map]
pub static BACKEND_ADDRS6: Array<Addr6> = Array::pinned(MAX_BACKENDS, 0);

#[map]
pub static REPLIES6: HashMap<L4Addr6, ReplyEntry6> = HashMap::pinned(MAX_BACKENDS, 0);

#[map]
pub static VIP_ADDRS6: HashMap<Addr6, VipAddr> = HashMap::pinned(MAX_VIPS, 0);

#[map]
pub static FRAGS6: LruHashMap<FragKey6, FragEntry> = LruHashMap::pinned(FRAG_TABLE_SIZE, 0);

#[map]
pub static REPLY_ADDRS6: HashMap<Addr6, u32> = HashMap::pinned(MAX_BACKENDS, 0);

#[map]
pub static FIB_CACHE6: LruHashMap<Addr6, FibEntry> = LruHashMap::pinned(FIB_CACHE_SIZE, 0);

/// This host's IPv6 addresses → 1 (see `LOCAL_ADDRS`).
#[map]
pub static LOCAL_ADDRS6: HashMap<Addr6, u32> = HashMap::pinned(MAX_LOCAL_ADDRS, 0);

// `TAILS`, the tail-call table, is declared by each object's root
// (`main.rs` pinned, `explain.rs` its own): the explain programs must
// call each other, never the data plane's.
