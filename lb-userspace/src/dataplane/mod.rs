//! The data plane as user space sees it: load or adopt the XDP program and
//! its pinned maps, attach it, keep the maps in sync, read the counters.
//!
//! This is the only module that touches aya. Everything under the pin path
//! outlives the controller: maps, and one pinned XDP link per interface. A
//! restarted `xdplb run` reuses the pinned maps (flow table included) and
//! swaps its freshly loaded program into the pinned links atomically, so no
//! packet is ever without a program and no flow is forgotten.
//!
//! Ring updates never show a packet a half-written ring: each VIP has two
//! rings; the one not in use is written entry by entry, then the VIP's hash
//! entry is replaced in one update naming the other slot. Hash-map updates
//! are atomic for readers (RCU), array writes are not — hence the flip.
//!
//! Layout: `load` (load or adopt), `layout` (what adoption checks),
//! `bpffs` (where pins live), `pins` (pin files, `down`), `attach`, `tables`
//! (VIPs, rings, slots, replies, names), `host` (this host's MACs and
//! addresses), `keys` (map keys from endpoints), `counters`, `census` and
//! `flows` (the flow table), `error`; [`decap`] is the backend-side program.

use std::{collections::HashMap as StdHashMap, net::IpAddr, path::PathBuf};

use aya::{
    maps::{xdp::DevMapHash, Array, HashMap, MapData},
    programs::XdpMode,
    Ebpf,
};
use lb_common::{
    limits::{MAX_BACKENDS, MAX_VIPS},
    Addr6, BackendMeta, IfaceMeta, L4Addr, L4Addr6, Name, ReplyEntry, ReplyEntry6, VipAddr,
    VipMeta, NAMES_LEN,
};

mod attach;
mod bpffs;
mod census;
mod counters;
pub mod decap;
mod error;
mod explain;
mod flows;
mod host;
mod keys;
mod layout;
mod load;
mod pins;
mod syncmaps;
mod tables;

pub use attach::LinkState;
pub use bpffs::{prepare_pin_path, resolve_pin_path, BPFFS_ROOT};
pub use census::{flow_census, flow_counts, judge_flow, FlowCensus, FlowVerdict};
pub use counters::{BackendStats, CounterReader, Counters, VipStats};
pub use error::DataplaneError;
pub use explain::{Explained, Explainer};
pub use flows::FlowTable;
pub use keys::{
    addr6, backend_name_index, l4addr, l4addr4, l4addr6, socket_addr, socket_addr6, BackendSlot,
};
pub use layout::{layout_difference, MapShape};
pub use pins::{down, is_own_pin, xdp_link_ifindex, DownReport};
pub use syncmaps::{flow_seen_now, SyncBackend, SyncMaps};

pub(crate) use bpffs::ensure_local_bpffs;
pub(crate) use error::map_err;
pub(crate) use host::local_addrs;
pub(crate) use load::load_program;
pub(crate) use pins::{detach_pinned_link, open_pinned, pinned_link_ifindex};

use census::monotonic_coarse_ns;
use keys::{backend_addr, endpoint4, endpoint6, key_of, Key};
use layout::check_pinned_layout;

pub use crate::config::{Endpoint, Protocol};

/// The XDP object built by `build.rs` (aya-build), embedded in the binary.
static PROGRAM_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb-ebpf"));

/// How the maps are shaped; fixed for the life of a pinned data plane.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Shape {
    pub pin_path: PathBuf,
    pub ring_size: u32,
    pub flow_table_size: u32,
}

/// The program's load-time constants (not map shapes: a restart with new
/// values simply loads a program with them).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tuning {
    /// For the whole host; 0 = no cap (see `[dataplane]
    /// max_flow_inserts_per_sec`).
    pub max_flow_inserts_per_sec: u32,
    /// Outer source of IPv4 `tunnel` pools (`[dataplane] tunnel_source`):
    /// one address (a /32), or a prefix each flow gets one address of.
    pub tunnel_source_v4: Option<ipnet::Ipv4Net>,
    /// Outer source of IPv6 `tunnel` pools.
    pub tunnel_source_v6: Option<ipnet::Ipv6Net>,
    /// Per CPU: answers the program makes itself (`[dataplane]
    /// answers_per_sec`; 0 = none).
    pub answers_per_sec: u32,
    /// The flow table's tag key that `[sync]` requires (derived from its
    /// secret, the same on every gateway); None: the pinned one, or a
    /// random one for a new table.
    pub flow_seed: Option<u64>,
}

impl Default for Tuning {
    fn default() -> Self {
        Tuning {
            max_flow_inserts_per_sec: lb_common::limits::DEFAULT_MAX_FLOW_INSERTS_PER_SEC,
            tunnel_source_v4: None,
            tunnel_source_v6: None,
            answers_per_sec: lb_common::limits::DEFAULT_ANSWERS_PER_SEC,
            flow_seed: None,
        }
    }
}

/// The program's tunnel globals, as both objects (the data plane's and
/// explain's) are loaded with them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct TunnelGlobals {
    /// `TUNNEL_SOURCE_V4`: the prefix's network address, in network order
    /// as the program writes it into the outer header (0: none).
    pub source_v4: u32,
    /// `TUNNEL_HOST_BITS_V4`: the bits of it a flow's hash picks.
    pub host_bits_v4: u32,
    pub source_v6: Addr6,
    pub host_bits_v6: u32,
}

impl Tuning {
    pub(crate) fn tunnel_globals(&self) -> TunnelGlobals {
        TunnelGlobals {
            source_v4: self
                .tunnel_source_v4
                .map_or(0, |n| u32::from_ne_bytes(n.network().octets())),
            host_bits_v4: self
                .tunnel_source_v4
                .map_or(0, |n| u32::from(32 - n.prefix_len())),
            source_v6: self
                .tunnel_source_v6
                .map_or(Addr6::default(), |n| addr6(n.network())),
            host_bits_v6: self
                .tunnel_source_v6
                .map_or(0, |n| u32::from(128 - n.prefix_len())),
        }
    }

    /// The program's `MAX_FLOW_INSERTS_PER_SEC`: each of `cpus` CPUs'
    /// share of the host's budget (rounded up: together they insert at
    /// most `cpus - 1` more than the budget, never `cpus` times it). 0
    /// stays 0 (no cap).
    pub fn inserts_per_cpu(&self, cpus: usize) -> u32 {
        let cpus = cpus.max(1) as u32;
        self.max_flow_inserts_per_sec.div_ceil(cpus)
    }

    /// The program's `ANSWER_COST_NS`: what one answer costs of a CPU's
    /// one-second credit (`u64::MAX`, never affordable, for 0).
    pub fn answer_cost_ns(&self) -> u64 {
        match self.answers_per_sec {
            0 => u64::MAX,
            n => 1_000_000_000 / n as u64,
        }
    }
}

/// `xdp_mode` from the config.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttachMode {
    /// Native where the driver supports it, else generic (the kernel picks).
    Auto,
    Native,
    Generic,
}

impl AttachMode {
    pub(crate) fn xdp_mode(self) -> XdpMode {
        match self {
            AttachMode::Auto => XdpMode::Default,
            AttachMode::Native => XdpMode::Driver,
            AttachMode::Generic => XdpMode::Skb,
        }
    }
}

/// A loaded, pinned data plane.
pub struct Dataplane {
    shape: Shape,
    ebpf: Ebpf,
    vips: HashMap<MapData, L4Addr, VipMeta>,
    vips6: HashMap<MapData, L4Addr6, VipMeta>,
    backends: Array<MapData, BackendMeta>,
    backend_addrs6: Array<MapData, Addr6>,
    replies: HashMap<MapData, L4Addr, ReplyEntry>,
    replies6: HashMap<MapData, L4Addr6, ReplyEntry6>,
    rings: Array<MapData, u32>,
    names: Array<MapData, Name>,
    ifaces: Array<MapData, IfaceMeta>,
    tx_ports: DevMapHash<MapData>,
    local_addrs: HashMap<MapData, u32, u32>,
    local_addrs6: HashMap<MapData, Addr6, u32>,
    addr_filter: Array<MapData, u64>,
    vip_addrs: HashMap<MapData, u32, VipAddr>,
    vip_addrs6: HashMap<MapData, Addr6, VipAddr>,
    reply_addrs: HashMap<MapData, u32, u32>,
    extra_macs: HashMap<MapData, u64, u32>,
    reply_addrs6: HashMap<MapData, Addr6, u32>,
    /// The keys of `VIPS`/`VIPS6` and `REPLIES`/`REPLIES6` (by
    /// `FilterSide`), and the words of `ADDR_FILTER` as written: a word is
    /// recomputed from the keys and written only when it changes, with no
    /// map read.
    filtered: [std::collections::HashSet<Key>; 2],
    filter_words: Vec<u64>,
    /// Each VIP address's pools (port, protocol) and whether each can
    /// serve (its ring names a backend): `VIP_ADDRS`/`VIP_ADDRS6` as
    /// written.
    vip_pools: StdHashMap<IpAddr, StdHashMap<(u16, u8), bool>>,
    /// Each slot's generation as the pinned map holds it: rings are written
    /// as references carrying it (see `lb_common::backend_ref`).
    generations: Vec<u32>,
    /// What each (vip index, slot) ring holds as far as we wrote it: lets a
    /// ring update write only the entries that change. Empty after adopt.
    written: StdHashMap<(u32, u32), Vec<u32>>,
}

const _: () = assert!(NAMES_LEN == MAX_VIPS + MAX_BACKENDS);
