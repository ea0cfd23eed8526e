//! The layouts of every map the XDP program and `xdplb` share.
//!
//! This crate is the single definition of those layouts: the eBPF program
//! (`lb-ebpf`) and the controller (`lb-userspace`, with feature `user`) both
//! compile these exact types. Every type is `#[repr(C)]` with explicit
//! padding so the kernel, the verifier and user space agree byte for byte;
//! sizes are asserted at compile time below each type.
//!
//! Byte order: fields holding addresses and ports are in **network order**
//! (as they sit in the packet), so the data plane never swaps bytes on the hot
//! path. Everything else is host order.
//!
//! Layout:
//! - [`limits`]: how big the maps are, and why.
//! - [`maps`]: the map names (the pin file names under the pin path).
//! - keys and values: [`L4Addr`], [`VipMeta`], [`BackendMeta`], [`FlowKey`],
//!   [`FlowBucket`], [`ReplyEntry`], [`FibEntry`], [`IfaceMeta`].
//! - IPv6: its own maps with 16-byte addresses ([`L4Addr6`], [`FlowKey6`],
//!   [`ReplyEntry6`], [`Addr6`]), so the IPv4 path reads the same small keys
//!   as before and pays nothing for the other family. Backend state, VIP
//!   metadata, rings, the flow table (it keeps tags, not tuples), counters
//!   and names are shared by both families.
//! - backend references ([`backend_ref`]): slot and generation in one u32.
//! - counters: [`VipCounters`], [`BackendCounters`], [`GlobalCounter`].
//! - [`flow_hash`] and [`ring_slot_index`]: the selection arithmetic both sides
//!   must compute identically (tests predict the data plane's choice with it).
#![no_std]

pub mod limits {
    //! Map capacities. Changing one changes the pinned maps' shapes, so a
    //! running data plane must be taken `down` before a binary with new limits
    //! can adopt it.

    /// VIP slots. Each VIP owns two rings of `ring_size` entries (see
    /// [`super::RING_SLOTS`]); 64 × 2 × 65537 × 4 bytes ≈ 33 MiB, which is the
    /// budget we accept for the rings at the default ring size.
    pub const MAX_VIPS: u32 = 64;
    /// Backend slots across all pools. Slots of removed backends are not
    /// reused until no flow can still name them (see the controller).
    pub const MAX_BACKENDS: u32 = 4096;
    /// Default flow table size (flows), as in the operator contract.
    pub const DEFAULT_FLOW_TABLE_SIZE: u32 = 1_048_576;
    /// Default Maglev ring size: prime, and ≥ 100 × a pool of 655 backends,
    /// which keeps Maglev's imbalance under 1% (Eisenbud et al., §5.3).
    pub const DEFAULT_RING_SIZE: u32 = 65_537;
    /// Cached next hops (one per client or backend address talked to).
    pub const FIB_CACHE_SIZE: u32 = 65_536;
    /// How long a cached `bpf_fib_lookup` result is trusted. Short enough that
    /// a moved neighbour (new MAC, new route) is picked up within a second.
    pub const FIB_CACHE_TTL_NS: u64 = 1_000_000_000;
    /// How long a closed flow's entry still steers its stragglers (the last
    /// ACK, a retransmitted FIN) before it counts as gone: a few RTOs.
    pub const FLOW_LINGER_NS: u64 = 4_000_000_000;
    /// How far `FlowSlot::seen` may lag a flow's last packet: one of its
    /// units (2^FLOW_SEEN_SHIFT ns, ~1 ms), since it is rewritten whenever
    /// a packet comes in a later unit. Eviction compares entries by it, so
    /// a live flow never looks older than an entry made after its last
    /// packet (with a one-second lag it did, and a flood's entries
    /// outranked idle keep-alive connections).
    pub const LAST_SEEN_RESOLUTION_NS: u64 = 1 << 20;
    /// Default of `[dataplane] max_flow_inserts_per_sec`, for the whole
    /// host (each CPU gets an equal share): above it new flows are balanced
    /// by the ring without a table entry, so a flood churns the table at a
    /// bounded rate.
    pub const DEFAULT_MAX_FLOW_INSERTS_PER_SEC: u32 = 500_000;
    /// Default of `[dataplane] answers_per_sec` (per CPU): RSTs, ICMP
    /// errors and echo replies the program makes itself. A flood of
    /// packets that each earn an answer then costs this host and its
    /// victims at most this many answers a second per CPU: the gateway is
    /// never a reflector.
    pub const DEFAULT_ANSWERS_PER_SEC: u32 = 1000;
    /// Fragmented datagrams tracked at once, per family (an LRU: the
    /// oldest is forgotten first).
    pub const FRAG_TABLE_SIZE: u32 = 16_384;
    /// How long a first fragment's decision steers the fragments after
    /// it. A datagram's fragments travel together; one this far behind its
    /// first is dropped, and an identification reused later does not find
    /// a stale decision.
    pub const FRAG_TTL_NS: u64 = 2_000_000_000;
    /// Connections backends opened from their service endpoints, tracked
    /// at once per family (an LRU).
    pub const OUTBOUND_SIZE: u32 = 65_536;
    /// `[dataplane] extra_macs` at most.
    pub const MAX_EXTRA_MACS: u32 = 16;
    /// Interfaces xdplb attaches to (redirect targets, MAC filter).
    pub const MAX_IFACES: u32 = 64;
    /// Addresses of this host the controller tells the program about (its
    /// own traffic to backends must not be mistaken for replies).
    pub const MAX_LOCAL_ADDRS: u32 = 256;
    /// Host bits of a `tunnel_source` prefix at most (256 outer sources):
    /// far more than a backend has receive queues to spread over, and
    /// few enough that `run` checks every address is this host's.
    pub const MAX_TUNNEL_SOURCE_HOST_BITS: u32 = 8;
    /// A translated fragmentation-needed never quotes less (IPv4): a
    /// forged message quoting a tiny MTU cannot make clients send tiny
    /// segments (RFC 5927 §7.2), and 576 is what every IPv4 host must
    /// accept (RFC 791), so no real path is smaller.
    pub const MIN_TUNNEL_PMTU4: u32 = 576;
    /// A translated packet-too-big never quotes less than IPv6's minimum
    /// link MTU (RFC 8200 §5).
    pub const MIN_TUNNEL_PMTU6: u32 = 1280;
}

pub mod maps {
    //! Map names as they appear in the object file and as pin file names.
    pub const VIPS: &str = "VIPS";
    pub const BACKENDS: &str = "BACKENDS";
    pub const RINGS: &str = "RINGS";
    pub const FLOWS: &str = "FLOWS";
    pub const REPLIES: &str = "REPLIES";
    pub const FIB_CACHE: &str = "FIB_CACHE";
    pub const GLOBAL_STATS: &str = "GLOBAL_STATS";
    pub const VIP_STATS: &str = "VIP_STATS";
    pub const BACKEND_STATS: &str = "BACKEND_STATS";
    pub const NAMES: &str = "NAMES";
    pub const IFACES: &str = "IFACES";
    pub const TX_PORTS: &str = "TX_PORTS";
    pub const LOCAL_ADDRS: &str = "LOCAL_ADDRS";
    pub const INSERT_RATE: &str = "INSERT_RATE";
    /// Address prefilter ([`addr_filter_word`](crate::addr_filter_word),
    /// [`addr_filter_word6`](crate::addr_filter_word6)): IPv4 VIP
    /// addresses, IPv4 backend addresses, then the same for IPv6, one bit
    /// each.
    pub const ADDR_FILTER: &str = "ADDR_FILTER";
    /// One `u32`: the [`LAYOUT_VERSION`](crate::LAYOUT_VERSION) the pinned
    /// maps were made with.
    pub const VERSION: &str = "VERSION";
    /// IPv6 VIP endpoints ([`L4Addr6`](crate::L4Addr6) → [`VipMeta`](crate::VipMeta)).
    pub const VIPS6: &str = "VIPS6";
    /// IPv6 backend addresses by backend slot (state stays in `BACKENDS`).
    pub const BACKEND_ADDRS6: &str = "BACKEND_ADDRS6";
    pub const REPLIES6: &str = "REPLIES6";
    /// One `u64`: the random key of the flow table's tags
    /// ([`flow_tag`](crate::flow_tag)), kept so that a restarted controller
    /// finds the flows its predecessor recorded.
    pub const FLOW_SEED: &str = "FLOW_SEED";
    pub const FIB_CACHE6: &str = "FIB_CACHE6";
    /// Next hops by backend slot ([`BackendHop`](crate::BackendHop)),
    /// per CPU.
    pub const BACKEND_HOPS: &str = "BACKEND_HOPS";
    pub const BACKEND_HOPS6: &str = "BACKEND_HOPS6";
    /// IPv4 fragments in flight ([`FragKey`](crate::FragKey) →
    /// [`FragEntry`](crate::FragEntry)).
    pub const FRAGS: &str = "FRAGS";
    pub const FRAGS6: &str = "FRAGS6";
    /// Backend addresses (network order → reply endpoints there): whose
    /// later fragments are replies.
    pub const REPLY_ADDRS: &str = "REPLY_ADDRS";
    pub const REPLY_ADDRS6: &str = "REPLY_ADDRS6";
    /// TCP connections a backend opened from its service endpoint
    /// ([`FlowKey`](crate::FlowKey) backend → foreign → last seen ns):
    /// their packets are not replies, and pass untouched.
    pub const OUTBOUND: &str = "OUTBOUND";
    pub const OUTBOUND6: &str = "OUTBOUND6";
    /// `[dataplane] extra_macs` ([`mac_key`](crate::mac_key) → 1).
    pub const EXTRA_MACS: &str = "EXTRA_MACS";
    /// IPv4 VIP addresses (network order → [`VipAddr`](crate::VipAddr)).
    pub const VIP_ADDRS: &str = "VIP_ADDRS";
    /// IPv6 VIP addresses ([`Addr6`](crate::Addr6) → [`VipAddr`](crate::VipAddr)).
    pub const VIP_ADDRS6: &str = "VIP_ADDRS6";
    pub const LOCAL_ADDRS6: &str = "LOCAL_ADDRS6";
    /// The tail-call table (`PROG_ARRAY`): [`TAIL_IPV6`](crate::TAIL_IPV6)
    /// and [`TAIL_UDP4`](crate::TAIL_UDP4) → the programs of those names.
    /// Pinned, because the kernel empties a program array when its last
    /// user-space reference goes: the data plane must outlive the
    /// controller.
    pub const TAILS: &str = "TAILS";
    /// The IPv6 program (TCP and UDP), reached by tail call.
    pub const PROGRAM_IPV6: &str = "xdplb_ipv6";
    /// The IPv4 UDP program, reached by tail call.
    pub const PROGRAM_UDP4: &str = "xdplb_udp4";
    /// The IPv4 UDP program for datagrams the VIP prefilter proved are to
    /// no VIP (a backend's replies), reached by tail call.
    pub const PROGRAM_UDP4_REPLY: &str = "xdplb_udp4_reply";
    /// The IPv6 UDP program, reached by tail call from the IPv6 one.
    pub const PROGRAM_UDP6: &str = "xdplb_udp6";
    /// The ICMPv6 error program, reached by tail call from the IPv6 one.
    pub const PROGRAM_ICMP6: &str = "xdplb_icmp6";
    /// The IPv4 later-fragment program, reached by tail call.
    pub const PROGRAM_FRAG4: &str = "xdplb_frag4";
    /// The IPv6 later-fragment program, reached by tail call.
    pub const PROGRAM_FRAG6: &str = "xdplb_frag6";
    /// The XDP entry point's name in the object file.
    pub const PROGRAM: &str = "xdplb";
    /// The pinned XDP link per interface is `link_<ifname>` under the pin path.
    pub const LINK_PREFIX: &str = "link_";
    /// The explain programs' trace ([`ExplainTrace`](crate::ExplainTrace)),
    /// one entry; only in the explain object, never pinned.
    pub const EXPLAIN: &str = "EXPLAIN";
}

/// The layout of the pinned maps as a whole. Bump it whenever a map's key,
/// value or meaning changes, so a controller never adopts maps made for
/// another layout (it refuses them and says to run `xdplb down`).
pub const LAYOUT_VERSION: u32 = 8;

/// `TAILS` slot of the IPv6 program. The balancer is four XDP programs
/// sharing every map: IPv4 TCP (and ICMP) in the attached one; IPv4 UDP and
/// IPv6 TCP (and ICMPv6) reached from it by tail call, IPv6 UDP from the
/// IPv6 one. Each is verified on its own, within its own
/// one-million-instruction budget and 512-byte stack: one path alone
/// takes about half the budget, two in one program exceeded it. IPv4 TCP
/// pays one comparison.
pub const TAIL_IPV6: u32 = 0;
/// `TAILS` slot of the IPv4 UDP program.
pub const TAIL_UDP4: u32 = 1;
/// `TAILS` slot of the IPv6 UDP program.
pub const TAIL_UDP6: u32 = 2;
/// `TAILS` slot of the ICMPv6 error program (from the IPv6 one): the
/// translation's own 512-byte stack.
pub const TAIL_ICMP6: u32 = 3;
/// `TAILS` slots of the later-fragment programs (from the IPv4 ones and
/// the IPv6 ones): a datagram's fragments after the first follow its
/// decision, in programs of their own so the common paths' stack and
/// verification stay as they were.
pub const TAIL_FRAG4: u32 = 4;
pub const TAIL_FRAG6: u32 = 5;
/// `TAILS` slot of the IPv4 UDP program for datagrams whose destination
/// the VIP prefilter proved is no VIP's (a backend's replies): the entry
/// program asked the prefilter before the tail call, and the program a
/// datagram is sent to carries the answer (a tail call carries nothing
/// else), so neither asks it twice.
pub const TAIL_UDP4_REPLY: u32 = 6;
pub const TAIL_SLOTS: u32 = 7;

/// Two rings per VIP: user space fills the one not in use, then flips
/// [`VipMeta::ring_slot`] in a single hash-map update, so a packet sees either
/// the whole old ring or the whole new one, never a half-written one.
pub const RING_SLOTS: u32 = 2;

/// `RINGS` value meaning "no backend": an empty active set.
pub const NO_BACKEND: u32 = u32::MAX;

pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
/// IPv6-in-IPv6 (the tunnel mode's outer header for IPv6 pools).
pub const IPPROTO_IPV6: u8 = 41;
pub const IPPROTO_ICMPV6: u8 = 58;

/// Backend references in `RINGS` and `FlowSlot::backend` carry the slot
/// in their low bits and the slot's generation above: a slot freed and
/// given to another backend gets a new generation, so a ring entry or flow
/// written for the old occupant no longer matches and is never used.
pub const BACKEND_SLOT_BITS: u32 = 12;
pub const BACKEND_SLOT_MASK: u32 = (1 << BACKEND_SLOT_BITS) - 1;
/// Generations count modulo this, so no reference equals [`NO_BACKEND`].
pub const GENERATIONS: u32 = (u32::MAX >> BACKEND_SLOT_BITS) - 1;
const _: () = assert!(1 << BACKEND_SLOT_BITS == limits::MAX_BACKENDS);

/// The reference to backend `slot` in its `generation`.
#[inline(always)]
pub const fn backend_ref(slot: u32, generation: u32) -> u32 {
    (generation << BACKEND_SLOT_BITS) | (slot & BACKEND_SLOT_MASK)
}

/// The slot a backend reference names.
#[inline(always)]
pub const fn ref_slot(r: u32) -> u32 {
    r & BACKEND_SLOT_MASK
}

/// The generation a backend reference was written for.
#[inline(always)]
pub const fn ref_generation(r: u32) -> u32 {
    r >> BACKEND_SLOT_BITS
}

/// `VipMeta::flags`: with no usable backend, answer TCP with a RST from the
/// VIP (`on_empty = "reject"`) instead of dropping.
pub const VIP_F_REJECT_EMPTY: u32 = 1;
/// `VipMeta::flags`: direct server return at L2 (`mode = "dsr"`): only the
/// destination MAC changes; the backend holds the VIP and answers directly.
pub const VIP_F_DSR: u32 = 2;
/// `VipMeta::flags`: IPIP to the backend (`mode = "tunnel"`) from the
/// program's tunnel source; the backend decapsulates and answers directly.
pub const VIP_F_TUNNEL: u32 = 4;
/// Protocol number of IPv4-in-IPv4.
pub const IPPROTO_IPIP: u8 = 4;

/// An L4 endpoint. Key of `VIPS` (what a client addresses) and of `REPLIES`
/// (a backend's service address, where its replies come from).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct L4Addr {
    /// IPv4 address, network order.
    pub addr: u32,
    /// TCP or UDP port, network order.
    pub port: u16,
    /// `IPPROTO_TCP` or `IPPROTO_UDP`: a TCP and a UDP VIP may share an
    /// address and port.
    pub proto: u8,
    pub _pad: u8,
}
const _: () = assert!(core::mem::size_of::<L4Addr>() == 8);

/// An IPv6 address as four network-order words, exactly as it sits in the
/// header (so `[u8; 16]::from` of the packet's bytes, read as u32 words).
/// Value of `BACKEND_ADDRS6` (array by backend slot), key of `FIB_CACHE6`
/// and `LOCAL_ADDRS6`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Addr6 {
    pub words: [u32; 4],
}
const _: () = assert!(core::mem::size_of::<Addr6>() == 16);

impl Addr6 {
    /// From the address's 16 bytes in network order.
    pub const fn from_octets(o: [u8; 16]) -> Addr6 {
        let mut words = [0u32; 4];
        let mut i = 0;
        while i < 4 {
            words[i] = u32::from_ne_bytes([o[4 * i], o[4 * i + 1], o[4 * i + 2], o[4 * i + 3]]);
            i += 1;
        }
        Addr6 { words }
    }

    /// The address's 16 bytes in network order.
    pub const fn octets(&self) -> [u8; 16] {
        let mut o = [0u8; 16];
        let mut i = 0;
        while i < 4 {
            let b = self.words[i].to_ne_bytes();
            o[4 * i] = b[0];
            o[4 * i + 1] = b[1];
            o[4 * i + 2] = b[2];
            o[4 * i + 3] = b[3];
            i += 1;
        }
        o
    }
}

/// [`L4Addr`] for IPv6: key of `VIPS6` and `REPLIES6`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct L4Addr6 {
    pub addr: Addr6,
    /// Network order.
    pub port: u16,
    pub proto: u8,
    pub _pad: u8,
}
const _: () = assert!(core::mem::size_of::<L4Addr6>() == 20);

/// Value of `VIPS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VipMeta {
    /// Index into `VIP_STATS` and into `RINGS` (see [`ring_slot_index`]).
    pub index: u32,
    /// Which of the VIP's two rings is live: 0 or 1.
    pub ring_slot: u32,
    /// `VIP_F_*` bits.
    pub flags: u32,
    /// `flow_idle_ms`: a flow entry older than this (plus
    /// [`limits::LAST_SEEN_RESOLUTION_NS`], the entry's clock granularity)
    /// is forgotten and the flow selected afresh. 0: never idles out.
    pub flow_idle_ms: u32,
}
const _: () = assert!(core::mem::size_of::<VipMeta>() == 16);

/// Whether a flow whose last packet was `age_ns` ago has idled out under
/// a VIP's `flow_idle_ms`. The recorded time lags the last packet by up to
/// the resolution, so that is added: a flow is never forgotten early.
#[inline(always)]
pub const fn flow_idle(flow_idle_ms: u32, age_ns: u64) -> bool {
    flow_idle_ms != 0 && age_ns > flow_idle_ms as u64 * 1_000_000 + limits::LAST_SEEN_RESOLUTION_NS
}

/// Backend slot unused.
pub const BACKEND_FREE: u8 = 0;
/// Gets new flows (it is in the ring) and keeps its established ones.
pub const BACKEND_ACTIVE: u8 = 1;
/// Out of the ring; established flows continue.
pub const BACKEND_DRAINING: u8 = 2;
/// Healthy spare, out of the ring; it has no flows, and would keep any.
pub const BACKEND_STANDBY: u8 = 3;
/// Failed health: established flows are re-steered on their next packet.
pub const BACKEND_DOWN: u8 = 4;

/// `BackendMeta::flags`: the operator drained it. Kept in the pinned map so a
/// drain survives a controller restart as well as a reload.
pub const BACKEND_F_OPERATOR_DRAIN: u8 = 1;

/// Value of `BACKENDS` (array indexed by backend slot).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BackendMeta {
    /// IPv4 address, network order.
    pub addr: u32,
    /// TCP port, network order.
    pub port: u16,
    /// `BACKEND_*` state.
    pub state: u8,
    /// `BACKEND_F_*` bits; the data plane ignores them.
    pub flags: u8,
    /// The VIP (pool) this slot serves; lets a restarted controller recognise
    /// its slots in the pinned map.
    pub vip_index: u32,
    /// Bumped (modulo [`GENERATIONS`]) whenever the slot gets a new
    /// occupant; references to the slot carry it (see [`backend_ref`]).
    pub generation: u32,
}
const _: () = assert!(core::mem::size_of::<BackendMeta>() == 16);

/// The client → VIP 5-tuple as received (TCP or UDP); `FLOWS` holds its
/// [`flow_tag`], not the tuple.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    /// Network order.
    pub src_addr: u32,
    /// Network order.
    pub dst_addr: u32,
    /// Network order.
    pub src_port: u16,
    /// Network order.
    pub dst_port: u16,
    pub proto: u8,
    pub _pad: [u8; 3],
}
const _: () = assert!(core::mem::size_of::<FlowKey>() == 16);

/// The IPv6 client → VIP 5-tuple (hashed by [`flow_tag6`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey6 {
    pub src_addr: Addr6,
    pub dst_addr: Addr6,
    /// Network order.
    pub src_port: u16,
    /// Network order.
    pub dst_port: u16,
    pub proto: u8,
    pub _pad: [u8; 3],
}
const _: () = assert!(core::mem::size_of::<FlowKey6>() == 40);

/// `FlowSlot` flags: the client sent FIN or RST. The entry keeps steering
/// the connection's last packets, but user space no longer counts it as
/// established.
pub const FLOW_F_CLOSING: u16 = 1;
/// `FlowSlot` flags: the backend sent FIN (seen on the reply path, which
/// looks the flow up only for FIN and RST).
pub const FLOW_F_BACKEND_FIN: u16 = 2;
/// `FlowSlot` flags: either side sent RST.
pub const FLOW_F_RESET: u16 = 4;
/// `FlowSlot` flags: the client sent a segment with ACK: the backend's
/// answer reached it. A flow without it is half open; many of them and no
/// established flow mean the backend's answers do not reach the clients
/// (a dsr backend without the VIP on a loopback, a wrong return route).
pub const FLOW_F_ACKED: u16 = 8;

/// `FlowSlot` flags: a UDP flow (no handshake, no FIN: it ends by going
/// quiet). The table keeps no 5-tuple, so user space learns the protocol
/// here.
pub const FLOW_F_UDP: u16 = 16;

/// `FlowSlot` flags: the backend answered the flow's SYN (its SYN-ACK
/// went through the reply path). With `FLOW_F_ACKED`, the flow saw both
/// directions: the table gives its entry up last (see
/// [`flow_established`]).
pub const FLOW_F_REPLIED: u16 = 32;

/// Whether a flow saw both directions through this gateway: the backend's
/// SYN-ACK and the client's ACK. A flood's entries never do (a spoofed
/// SYN is answered, never acknowledged; a spoofed ACK is answered with a
/// RST, which closes its entry), so when a new flow needs a way, an entry
/// that did is taken only if every candidate did.
#[inline(always)]
pub const fn flow_established(flags: u16) -> bool {
    flags & (FLOW_F_REPLIED | FLOW_F_ACKED) == FLOW_F_REPLIED | FLOW_F_ACKED
}

/// Whether a flow is over: reset, or FIN seen both ways. Its entry then
/// lingers [`limits::FLOW_LINGER_NS`] for the last ACKs and retransmissions,
/// and after that its slot is the first a new flow takes (and the
/// controller's flow count clears it), instead of holding the slot until
/// it is the least recently seen.
#[inline(always)]
pub const fn flow_closed(flags: u16) -> bool {
    flags & FLOW_F_RESET != 0
        || flags & (FLOW_F_CLOSING | FLOW_F_BACKEND_FIN) == FLOW_F_CLOSING | FLOW_F_BACKEND_FIN
}

/// Words (u64) of each quarter of `ADDR_FILTER`: 4,096 bits for IPv4 VIP
/// addresses, as many for IPv4 backend addresses, then the same two for
/// IPv6.
pub const ADDR_FILTER_WORDS: u32 = 64;
/// `ADDR_FILTER`'s first word of IPv4 backend (reply source) addresses.
pub const ADDR_FILTER_BACKENDS: u32 = ADDR_FILTER_WORDS;
/// `ADDR_FILTER`'s first word of IPv6 VIP addresses.
pub const ADDR_FILTER_VIPS6: u32 = 2 * ADDR_FILTER_WORDS;
/// `ADDR_FILTER`'s first word of IPv6 backend addresses.
pub const ADDR_FILTER_BACKENDS6: u32 = 3 * ADDR_FILTER_WORDS;
/// Words of `ADDR_FILTER`.
pub const ADDR_FILTER_LEN: u32 = 4 * ADDR_FILTER_WORDS;

/// Where an IPv4 address (network order) sits in a quarter of
/// `ADDR_FILTER`: (word, bit). Most traffic through a gateway is for no
/// VIP and from no backend; a clear bit says so with one array read, where
/// the `VIPS` and `REPLIES` hash lookups it spares cost ~10 ns on every
/// such packet. A set bit proves nothing (4,096 bits, Fibonacci-hashed):
/// the maps decide.
#[inline(always)]
pub const fn addr_filter_word(addr: u32) -> (u32, u64) {
    let h = addr.wrapping_mul(0x9e37_79b1) >> 20;
    (h >> 6, 1 << (h & 63))
}

/// [`addr_filter_word`] for an IPv6 address: its four words folded into
/// one first (addresses of one network differ in the last words).
#[inline(always)]
pub const fn addr_filter_word6(addr: &Addr6) -> (u32, u64) {
    let w = addr.words;
    addr_filter_word(w[0] ^ w[1].rotate_left(8) ^ w[2].rotate_left(16) ^ w[3].rotate_left(24))
}

/// Value of `VIP_ADDRS` / `VIP_ADDRS6` (keyed by a VIP's address, written
/// by user space): the address is a VIP's, so a packet to it that matches
/// no pool is answered or dropped by the program, never routed (a gateway
/// whose default route points upstream would send it back to the router
/// that sent it, until its TTL ran out).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VipAddr {
    /// Pools at this address (any port, either protocol).
    pub pools: u32,
    /// Of them, pools with a backend to send new flows to: an ICMP echo
    /// request to the address is answered while this is not 0.
    pub serving: u32,
}
const _: () = assert!(core::mem::size_of::<VipAddr>() == 8);

/// Key of `FRAGS`: an IPv4 datagram's fragments share source,
/// destination, protocol and identification (RFC 791), as they arrive
/// (before any rewrite).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FragKey {
    /// Network order.
    pub src: u32,
    /// Network order.
    pub dst: u32,
    /// The identification, as loaded (network order), in the low 16 bits.
    pub id: u32,
    pub proto: u8,
    pub _pad: [u8; 3],
}
const _: () = assert!(core::mem::size_of::<FragKey>() == 16);

/// Key of `FRAGS6`: an IPv6 datagram's fragments share source,
/// destination and the fragment header's identification (RFC 8200 §4.5).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FragKey6 {
    pub src: Addr6,
    pub dst: Addr6,
    /// As loaded (network order).
    pub id: u32,
    pub proto: u8,
    pub _pad: [u8; 3],
}
const _: () = assert!(core::mem::size_of::<FragKey6>() == 40);

/// `FragEntry::kind`: to a NAT pool's backend (destination rewritten).
pub const FRAG_NAT: u32 = 1;
/// To a `dsr` pool's backend (sent at L2).
pub const FRAG_DSR: u32 = 2;
/// To a `tunnel` pool's backend (encapsulated).
pub const FRAG_TUNNEL: u32 = 3;
/// A backend's reply (source rewritten to the VIP).
pub const FRAG_REPLY: u32 = 4;

/// Value of `FRAGS` and `FRAGS6`: what the program decided for a
/// datagram's first fragment (which carries the ports), so the fragments
/// after it, which carry none, are sent the same way and rewritten the
/// same way.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FragEntry {
    /// The backend (`FRAG_NAT`, `FRAG_DSR`, `FRAG_TUNNEL`) or the VIP
    /// (`FRAG_REPLY`); an IPv4 address in `words[0]`.
    pub addr: Addr6,
    /// `bpf_ktime_get_coarse_ns` past which the entry is void.
    pub expires_ns: u64,
    /// The backend's slot (its counters).
    pub backend: u32,
    /// The VIP's index (its counters).
    pub vip_index: u32,
    /// `FRAG_*`.
    pub kind: u32,
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<FragEntry>() == 40);

/// Value of `ANSWER_TOKENS` (per-CPU array of one): the token bucket of
/// the answers the program makes itself (`answers_per_sec`), in
/// nanoseconds of credit: each answer costs `1e9 / answers_per_sec`, and
/// credit accrues with time up to one second's worth.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AnswerTokens {
    pub credit_ns: u64,
    pub last_ns: u64,
}
const _: () = assert!(core::mem::size_of::<AnswerTokens>() == 16);

/// Entries per bucket of `FLOWS`: two cache lines of [`FlowSlot`]s.
pub const FLOW_WAYS: usize = 8;
/// Bits 0–7 of [`FlowSlot::tag`]: the flow's `FLOW_F_*` flags.
pub const FLOW_TAG_FLAGS: u64 = 0xff;
/// [`FlowSlot::seen`] counts `2^FLOW_SEEN_SHIFT` ns (~1.05 ms): 32 bits
/// then span 52 days, and recency is judged in seconds.
pub const FLOW_SEEN_SHIFT: u32 = 20;
const _: () = assert!(limits::LAST_SEEN_RESOLUTION_NS == 1 << FLOW_SEEN_SHIFT);

/// [`FlowSlot::tag`] of a slot a CPU is writing a new entry into. An
/// insert is three stores (backend, seen, tag), so it first claims the way
/// with a compare-and-swap from the word it judged to this (a second CPU
/// that judged the same word fails its swap and records nothing), writes
/// backend and seen, then publishes the tag. No flow's tag has bits 8–63
/// all clear ([`flow_tag`] sets bit 8), so this matches no flow, and it is
/// never taken as a victim nor reaped.
pub const FLOW_CLAIMED: u64 = FLOW_TAG_FLAGS;

/// One flow in `FLOWS`: the table keeps no 5-tuple, only a keyed 64-bit
/// hash of it ([`flow_tag`], [`flow_tag6`]), so an entry is 16 bytes and a
/// bucket of [`FLOW_WAYS`] is two cache lines.
///
/// Publishing (so no reader pairs one flow's tag with another's backend):
/// writers change `tag` only by compare-and-swap against the exact word
/// they read — an insert swaps it to [`FLOW_CLAIMED`] before writing
/// `backend`, a flag update ors its bits into the word it judged, user
/// space clears the word it judged — so a slot taken by another flow in
/// the meantime is neither overwritten by a stale insert nor resurrected
/// by a stale flag update. Readers load `tag`, then `backend`, then `tag`
/// again, and use `backend` only if the tag (flags aside) did not change.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowSlot {
    /// The flow's tag in bits 8–63 (never 0 for a flow), its `FLOW_F_*`
    /// flags in bits 0–7 ([`FLOW_TAG_FLAGS`]); 0: an empty slot.
    pub tag: u64,
    /// Backend the flow is pinned to: a [`backend_ref`].
    pub backend: u32,
    /// [`flow_seen`] of the last packet (its ~1 ms unit).
    pub seen: u32,
}
const _: () = assert!(core::mem::size_of::<FlowSlot>() == 16);

impl FlowSlot {
    /// The `FLOW_F_*` bits.
    #[inline(always)]
    pub const fn flags(&self) -> u16 {
        (self.tag & FLOW_TAG_FLAGS) as u16
    }
    /// Whether this slot holds the flow of `tag` (from [`flow_tag`]).
    #[inline(always)]
    pub const fn holds(&self, tag: u64) -> bool {
        self.tag & !FLOW_TAG_FLAGS == tag
    }
    /// Nanoseconds since the last packet, at `now` (ns). Another CPU may
    /// stamp the entry after `now` was read (its coarse clock ticked
    /// first): a `seen` ahead of `now` is age 0, not 52 days (see
    /// `fresh_if_ahead`).
    #[inline(always)]
    pub const fn age_ns(&self, now: u64) -> u64 {
        (fresh_if_ahead(flow_seen(now).wrapping_sub(self.seen) as u64)) << FLOW_SEEN_SHIFT
    }
}

/// An age in [`FlowSlot::seen`] units (`now - seen`, wrapped to 32 bits)
/// with a `seen` ahead of `now` read as 0: a difference of 2^31 units or
/// more is a stamp from the future, so a flow idle for over half the
/// units' 52-day span reads as fresh too (the controller reaps idle flows
/// long before). Branch-free: the verifier follows one path. (The
/// program's victim scan orders ages with a bias instead, at no cost per
/// way: `judge` in lb-ebpf/src/select.rs.)
#[inline(always)]
const fn fresh_if_ahead(age: u64) -> u64 {
    age & ((age >> 31) & 1).wrapping_sub(1)
}

/// Value of `FLOWS` (an array of buckets, BPF_F_MMAPABLE so its data
/// starts on a page and a bucket never straddles more than its two
/// lines). A flow lives in one of the two buckets [`flow_bucket_pair`]
/// gives its tag, in any way.
#[repr(C, align(64))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowBucket {
    pub slots: [FlowSlot; FLOW_WAYS],
}
const _: () = assert!(core::mem::size_of::<FlowBucket>() == 128);

/// `now` (ns, `bpf_ktime_get_coarse_ns`) in [`FlowSlot::seen`] units.
#[inline(always)]
pub const fn flow_seen(now: u64) -> u32 {
    (now >> FLOW_SEEN_SHIFT) as u32
}

/// Buckets for a table of `entries` flows (rounded up to whole buckets).
#[inline(always)]
pub const fn flow_buckets(entries: u32) -> u32 {
    let b = entries.div_ceil(FLOW_WAYS as u32);
    if b == 0 {
        1
    } else {
        b
    }
}

/// The two buckets a flow of `tag` may live in, in a table of `buckets`
/// (multiply-shift: any bucket count, no division). A new flow takes a
/// free way in either, so buckets fill evenly ("two choices"): with one
/// bucket per flow, 8-way buckets overflow at half load (2% of them at
/// 50%), evicting live flows from a table that is far from full; with two,
/// not before ~90%. Both come from the tag's keyed low word (its high
/// word is the public ring hash, [`flow_tag_ring_hash`]: nobody outside
/// can aim a flood at one bucket): the first from the word itself, the
/// second from it times an odd constant (a bijection of the word, whose
/// high bits the reduction takes).
#[inline(always)]
pub const fn flow_bucket_pair(tag: u64, buckets: u32) -> (u32, u32) {
    let low = tag as u32;
    (
        reduce(low, buckets),
        reduce(low.wrapping_mul(SECOND_BUCKET_MUL), buckets),
    )
}

/// Odd (2^32 / golden ratio): the second bucket's multiplier.
const SECOND_BUCKET_MUL: u32 = 0x9e37_79b1;

/// The ring hash ([`flow_hash`], [`flow_hash6`]) of the flow a tag was
/// made for: its high word. The flow table keeps no ring position
/// otherwise, and flow sync must tell which entries the current ring
/// would send elsewhere (docs/PAIR.md, "Flow sync").
#[inline(always)]
pub const fn flow_tag_ring_hash(tag: u64) -> u32 {
    (tag >> 32) as u32
}

#[inline(always)]
const fn reduce(w: u32, n: u32) -> u32 {
    ((w as u64 * n as u64) >> 32) as u32
}

/// murmur3's 64-bit finaliser: every input bit moves every output bit.
#[inline(always)]
const fn mix64(mut z: u64) -> u64 {
    z ^= z >> 33;
    z = z.wrapping_mul(0xff51_afd7_ed55_8ccd);
    z ^= z >> 33;
    z = z.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    z ^ (z >> 33)
}

#[inline(always)]
const fn pair(a: u32, b: u32) -> u64 {
    ((a as u64) << 32) | b as u64
}

/// A tag from the flow's keyed hash `h` and its ring hash: the ring hash
/// in the high word, 23 keyed bits above the flags in the low word (bit 8
/// set: a flow's tag is never 0). Two flows share a tag only if they share
/// the ring hash, so also the ring's backend, and 23 keyed bits.
#[inline(always)]
const fn tag_of(h: u64, ring_hash: u32) -> u64 {
    ((ring_hash as u64) << 32) | (h & 0xffff_ff00) | 0x100
}

/// A flow's tag in `FLOWS`, keyed by the table's `seed` (random per host,
/// kept with the pins; derived from `[sync] secret` when gateways share
/// flows) so that nobody outside can aim a flood at one bucket, and
/// carrying its ring hash ([`flow_tag_ring_hash`]).
#[inline(always)]
pub const fn flow_tag(key: &FlowKey, seed: u64) -> u64 {
    let addrs = pair(key.src_addr, key.dst_addr);
    let ports = ((key.src_port as u64) << 32) | ((key.dst_port as u64) << 16) | key.proto as u64;
    tag_of(
        mix64(mix64(addrs ^ seed).wrapping_add(ports)),
        flow_hash(key),
    )
}

/// [`flow_tag`] for IPv6.
#[inline(always)]
pub const fn flow_tag6(key: &FlowKey6, seed: u64) -> u64 {
    let s = key.src_addr.words;
    let d = key.dst_addr.words;
    let ports =
        ((key.src_port as u64) << 32) | ((key.dst_port as u64) << 16) | key.proto as u64 | 1 << 63;
    let mut h = mix64(pair(s[0], s[1]) ^ seed);
    h = mix64(h.wrapping_add(pair(s[2], s[3])));
    h = mix64(h.wrapping_add(pair(d[0], d[1])));
    h = mix64(h.wrapping_add(pair(d[2], d[3])));
    tag_of(mix64(h.wrapping_add(ports)), flow_hash6(key))
}

/// Value of `REPLIES` (hash keyed by a backend's [`L4Addr`], written by user
/// space): which VIP a reply from that backend must appear to come from.
///
/// Reverse NAT is stateless: every packet from a backend endpoint to an
/// address that is not this host's (`LOCAL_ADDRS`: the controller's own
/// health checks) is rewritten to come from the VIP, whether or not the flow
/// table still holds the flow (eviction, a second gateway behind ECMP).
/// It means one backend endpoint serves one VIP (config validation).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReplyEntry {
    /// VIP address, network order.
    pub vip_addr: u32,
    /// VIP port, network order.
    pub vip_port: u16,
    /// `REPLY_F_*`, set by the program (user space writes 0).
    pub flags: u16,
    pub backend: u32,
    pub vip_index: u32,
}
const _: () = assert!(core::mem::size_of::<ReplyEntry>() == 16);

/// `ReplyEntry::flags`: the backend has opened a TCP connection from this
/// endpoint (a SYN without ACK to a foreign address): its packets are
/// looked up in `OUTBOUND` before they are taken for replies. Set by the
/// program once, so only such endpoints pay the lookup.
pub const REPLY_F_OPENS: u16 = 1;

/// Value of `REPLIES6` (keyed by a backend's [`L4Addr6`]): [`ReplyEntry`]
/// for IPv6 pools.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReplyEntry6 {
    pub vip_addr: Addr6,
    /// Network order.
    pub vip_port: u16,
    /// `REPLY_F_*`.
    pub flags: u16,
    pub backend: u32,
    pub vip_index: u32,
}
const _: () = assert!(core::mem::size_of::<ReplyEntry6>() == 28);

/// Value of `INSERT_RATE` (per-CPU array of one): the current one-second
/// window of flow-table inserts on this CPU, whose budget is its share of
/// the host's `max_flow_inserts_per_sec`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RateWindow {
    pub start_ns: u64,
    pub inserts: u64,
}
const _: () = assert!(core::mem::size_of::<RateWindow>() == 16);

/// Value of `FIB_CACHE` (LRU hash keyed by destination IPv4, network order):
/// a `bpf_fib_lookup` result reused until `expires_ns`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FibEntry {
    pub ifindex: u32,
    /// 1 if `ifindex` was in `TX_PORTS` when looked up (we may redirect
    /// there), else 0 (the kernel forwards).
    pub tx_port: u32,
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    /// The egress device's MTU when looked up (bpf_check_mtu).
    pub mtu: u32,
    pub expires_ns: u64,
}
const _: () = assert!(core::mem::size_of::<FibEntry>() == 32);

/// Value of `BACKEND_HOPS` / `BACKEND_HOPS6` (per-CPU arrays by backend
/// slot): the next hop toward the slot's backend, and the address it was
/// looked up for (`A`: `u32` or [`Addr6`]), so a slot that holds another
/// backend since misses. The established path reads it by slot, an array
/// index, where a cache keyed by address would be a hash lookup per packet.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BackendHop<A> {
    pub hop: FibEntry,
    pub dst: A,
}
const _: () = assert!(core::mem::size_of::<BackendHop<u32>>() == 40);
const _: () = assert!(core::mem::size_of::<BackendHop<Addr6>>() == 48);

/// Value of `IFACES` (array indexed by `ifindex % IFACE_SLOTS`, written by
/// user space for every attached interface): its MAC, so frames addressed
/// to other hosts (a promiscuous port, a bridge member) pass untouched. An
/// array slot costs the hot path far less than a hash lookup; `ifindex`
/// says whose slot it is.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IfaceMeta {
    /// 0: slot unused.
    pub ifindex: u32,
    pub mac: [u8; 6],
    pub _pad: [u8; 2],
}
const _: () = assert!(core::mem::size_of::<IfaceMeta>() == 12);

/// Key of `EXTRA_MACS`: a MAC's six bytes as the low 48 bits of a
/// little-endian load (how the program reads them from the frame).
#[inline(always)]
pub const fn mac_key(mac: [u8; 6]) -> u64 {
    u64::from_le_bytes([mac[0], mac[1], mac[2], mac[3], mac[4], mac[5], 0, 0])
}

/// Entries of `IFACES`. Two attached interfaces whose ifindexes collide
/// modulo this leave the second unfiltered (the controller warns).
pub const IFACE_SLOTS: u32 = 1024;

/// Value of `NAMES` (array, read only by user space): the pool name of VIP
/// index `i` at `i`, the backend name of slot `s` at `MAX_VIPS + s`. Kept in
/// the pinned maps so `xdplb stats` can label counters with the controller
/// stopped, and a restarted controller can recognise its slots.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Name {
    pub len: u8,
    pub bytes: [u8; NAME_MAX],
}
/// Longest pool or backend name, bytes.
pub const NAME_MAX: usize = 63;
const _: () = assert!(core::mem::size_of::<Name>() == 64);

impl Default for Name {
    fn default() -> Self {
        Name {
            len: 0,
            bytes: [0; NAME_MAX],
        }
    }
}

impl Name {
    /// `None` if longer than [`NAME_MAX`].
    pub fn new(s: &str) -> Option<Name> {
        let b = s.as_bytes();
        if b.len() > NAME_MAX {
            return None;
        }
        let mut n = Name::default();
        n.bytes[..b.len()].copy_from_slice(b);
        n.len = b.len() as u8;
        Some(n)
    }

    pub fn as_str(&self) -> &str {
        let len = (self.len as usize).min(NAME_MAX);
        core::str::from_utf8(&self.bytes[..len]).unwrap_or("")
    }
}

/// Entries of `NAMES`.
pub const NAMES_LEN: u32 = limits::MAX_VIPS + limits::MAX_BACKENDS;

/// Value of `VIP_STATS` (per-CPU array indexed by VIP index). Counts the
/// client → VIP direction.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VipCounters {
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
    /// Packets answered with a RST because the pool had no usable backend.
    pub rejected: u64,
}
const _: () = assert!(core::mem::size_of::<VipCounters>() == 32);

/// Value of `BACKEND_STATS` (per-CPU array indexed by backend slot).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BackendCounters {
    /// Client → backend packets.
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
    /// Backend → client packets rewritten back to the VIP.
    pub reply_packets: u64,
    pub reply_bytes: u64,
}
const _: () = assert!(core::mem::size_of::<BackendCounters>() == 40);

/// Indices of `GLOBAL_STATS` (per-CPU array of u64).
///
/// Every packet bumps exactly one verdict counter (`Passed`, `Dropped`,
/// `Redirected`, `Answered`); dropped and notable packets also bump one
/// reason or event counter. `Rx` is not counted by the program: readers
/// derive it as the sum of the verdicts.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GlobalCounter {
    Rx = 0,
    Passed,
    Dropped,
    Redirected,
    /// Answered by the program itself with XDP_TX: a RST for an empty pool,
    /// an ICMP fragmentation-needed.
    Answered,
    /// Non-SYN packets of a VIP with no usable flow entry (evicted, or from
    /// before the data plane was loaded): selected again by the ring.
    FlowMisses,
    /// Established flows moved off a backend that went down.
    Resteered,
    /// FIB lookups that found the next hop's neighbour entry unresolved:
    /// a NAT packet is handed to the kernel rewritten, a dsr or tunnel one
    /// dropped (`DropDirectUnreachable`).
    PassNeighUnresolved,
    /// Non-first fragments that are not ours (to no VIP address, from no
    /// backend): passed.
    PassFragment,
    /// TCP segments whose checksum was only partial (CHECKSUM_PARTIAL from a
    /// veth or a VM's virtio): completed before they were sent on.
    PartialChecksum,
    /// ICMP errors about a VIP's packet, steered to the flow's backend.
    IcmpToBackend,
    /// ICMP errors about a packet a client sent to a backend, translated
    /// back to the VIP for the client.
    IcmpToClient,
    /// ICMP errors we could not read the quoted header of: passed.
    PassIcmpUnparsed,
    /// Oversized DF packets to a backend, answered with ICMP
    /// fragmentation-needed from the VIP.
    FragNeededSent,
    /// Oversized packets handed to the kernel: a DF reply (the kernel sends
    /// the backend its fragmentation-needed) or a non-DF packet (the kernel
    /// fragments it).
    PassTooBig,
    /// Frames addressed to another host's MAC (promiscuous mode): passed.
    PassNotForUs,
    /// A redirect target that is not one of xdplb's interfaces: a NAT
    /// packet is passed to the kernel, which forwards it; a dsr or tunnel
    /// one is dropped (`DropDirectUnreachable`).
    RedirectFallback,
    /// Packets answered with a RST because the pool was empty.
    Rejected,
    /// Packets sent to a backend of a `dsr` pool (MAC rewrite only).
    DsrSent,
    /// Packets sent to a backend of a `tunnel` pool, encapsulated.
    TunnelSent,
    /// New flows recorded in the flow table.
    FlowInserts,
    /// New flows balanced by the ring without an entry: over the per-CPU
    /// insert rate (`max_flow_inserts_per_sec`).
    FlowInsertsCapped,
    /// IPv6 VIP packets whose hop-by-hop, destination-options or finished
    /// routing headers were skipped to reach TCP/UDP (left as they are).
    Ipv6ExtSkipped,
    /// IPv4 UDP datagrams without a checksum (0, allowed in IPv4): balanced,
    /// and their checksum left 0.
    UdpNoChecksum,
    /// Flow entries found idle past their VIP's `flow_idle_ms`: the flow was
    /// selected afresh.
    FlowIdled,
    /// IPv6 packets with a longer extension-header chain than the program
    /// follows: their L4 header is unknown, so they pass.
    PassIpv6ExtUnparsed,
    /// Frames for a tail-called program (IPv6, UDP) whose `TAILS` slot is
    /// empty (a data plane loaded but not finished setting up): passed.
    PassTailMissing,
    DropTruncatedEth,
    DropTruncatedIp,
    DropBadIpVersion,
    DropBadIhl,
    DropBadTotalLength,
    /// A VIP packet carrying IPv4 options (we do not rewrite those).
    DropIpOptions,
    /// A non-first fragment to a VIP address or from a backend whose first
    /// fragment was not seen (or was seen more than `FRAG_TTL_NS` before):
    /// nothing says where it goes.
    DropFragment,
    DropTruncatedTcp,
    /// VIP with an empty active set (`on_empty = "drop"`, or a RST that
    /// must not be answered).
    DropNoBackend,
    /// The ring named a slot that is free, belongs to another VIP, has a
    /// newer occupant or is down: the ring is being rewritten.
    DropStaleRing,
    /// `bpf_fib_lookup` said the destination is unreachable or forbidden.
    DropUnroutable,
    /// A `dsr` or `tunnel` backend with no resolved neighbour or behind an
    /// egress that is not ours, or a non-DF frame too big for a `dsr`
    /// backend's link: the program must send these itself (the kernel would
    /// route a dsr frame to the VIP, and drop an outer packet from its own
    /// address as martian), and it cannot.
    DropDirectUnreachable,
    DropTruncatedUdp,
    /// An IPv6 UDP datagram with checksum 0, which IPv6 forbids (RFC 8200
    /// §8.1).
    DropUdp6ZeroChecksum,
    /// A VIP packet whose IPv6 extension headers we do not rewrite through:
    /// a routing header with segments left (the destination is not final),
    /// ESP/AH, an unknown header, or a chain too long or truncated.
    DropIpv6Extension,
    /// Non-first fragments sent the way their first fragment went.
    FragmentFollowed,
    /// Packets of TCP connections a backend opened from its service
    /// endpoint (its SYN without ACK, and what it sent after): not
    /// replies, passed untouched.
    PassBackendOpened,
    /// Packets to a VIP address that match no pool, answered: a TCP RST
    /// or an ICMP port unreachable from the VIP.
    NoPoolAnswered,
    /// ICMP echo requests to a VIP address with a serving pool, answered.
    EchoReplied,
    /// Packets to a VIP address that match no pool and get no answer
    /// (another protocol, a RST, an echo request while no pool at the
    /// address can serve, an ICMP error about nothing of ours).
    DropNoPool,
    /// Answers the program would have made (RST, ICMP error, echo reply)
    /// over `answers_per_sec` on this CPU: the packet was dropped.
    DropAnswerLimited,
    /// A router's fragmentation-needed (packet-too-big) about an outer
    /// packet of a `tunnel` pool, translated into one from the VIP to the
    /// client about its own packet.
    TunnelTooBig,
    /// Flow-table entries another CPU changed between this CPU's read and
    /// its write or use (an insert whose claim found the way taken, a flag
    /// update whose word had changed, a pin whose tag changed while its
    /// backend was read): nothing was written or used, the packet was
    /// balanced by the ring (see [`FLOW_CLAIMED`]).
    FlowRaced,
    /// Internal: a map lookup that cannot fail failed (bad slot index).
    DropInternal,
}

impl GlobalCounter {
    pub const COUNT: u32 = GlobalCounter::DropInternal as u32 + 1;
    /// The verdicts, one per packet; `Rx` is their sum.
    pub const VERDICTS: [GlobalCounter; 4] = [
        GlobalCounter::Passed,
        GlobalCounter::Dropped,
        GlobalCounter::Redirected,
        GlobalCounter::Answered,
    ];
    /// The drop reasons, with their metric label.
    pub const DROP_REASONS: [(GlobalCounter, &'static str); 18] = [
        (GlobalCounter::DropTruncatedEth, "truncated_eth"),
        (GlobalCounter::DropTruncatedIp, "truncated_ip"),
        (GlobalCounter::DropBadIpVersion, "bad_ip_version"),
        (GlobalCounter::DropBadIhl, "bad_ihl"),
        (GlobalCounter::DropBadTotalLength, "bad_total_length"),
        (GlobalCounter::DropIpOptions, "ip_options"),
        (GlobalCounter::DropFragment, "fragment"),
        (GlobalCounter::DropTruncatedTcp, "truncated_tcp"),
        (GlobalCounter::DropNoBackend, "no_backend"),
        (GlobalCounter::DropStaleRing, "stale_ring"),
        (GlobalCounter::DropUnroutable, "unroutable"),
        (GlobalCounter::DropDirectUnreachable, "direct_unreachable"),
        (GlobalCounter::DropTruncatedUdp, "truncated_udp"),
        (GlobalCounter::DropUdp6ZeroChecksum, "udp6_zero_checksum"),
        (GlobalCounter::DropIpv6Extension, "ipv6_extension"),
        (GlobalCounter::DropNoPool, "no_pool"),
        (GlobalCounter::DropAnswerLimited, "answer_limited"),
        (GlobalCounter::DropInternal, "internal"),
    ];
    /// Notable events that are not drops, with their metric label.
    pub const EVENTS: [(GlobalCounter, &'static str); 28] = [
        (GlobalCounter::FlowMisses, "flow_miss"),
        (GlobalCounter::Resteered, "resteered"),
        (GlobalCounter::PassNeighUnresolved, "neigh_unresolved"),
        (GlobalCounter::PassFragment, "later_fragment"),
        (GlobalCounter::PartialChecksum, "partial_checksum"),
        (GlobalCounter::IcmpToBackend, "icmp_to_backend"),
        (GlobalCounter::IcmpToClient, "icmp_to_client"),
        (GlobalCounter::PassIcmpUnparsed, "icmp_unparsed"),
        (GlobalCounter::FragNeededSent, "frag_needed_sent"),
        (GlobalCounter::PassTooBig, "too_big_to_kernel"),
        (GlobalCounter::PassNotForUs, "not_for_us"),
        (GlobalCounter::RedirectFallback, "redirect_fallback"),
        (GlobalCounter::Rejected, "rejected"),
        (GlobalCounter::FlowInserts, "flow_insert"),
        (GlobalCounter::FlowInsertsCapped, "flow_insert_capped"),
        (GlobalCounter::DsrSent, "dsr_sent"),
        (GlobalCounter::TunnelSent, "tunnel_sent"),
        (GlobalCounter::Ipv6ExtSkipped, "ipv6_ext_skipped"),
        (GlobalCounter::UdpNoChecksum, "udp_no_checksum"),
        (GlobalCounter::FlowIdled, "flow_idled"),
        (GlobalCounter::PassIpv6ExtUnparsed, "ipv6_ext_unparsed"),
        (GlobalCounter::PassTailMissing, "tail_missing"),
        (GlobalCounter::NoPoolAnswered, "no_pool_answered"),
        (GlobalCounter::EchoReplied, "echo_replied"),
        (GlobalCounter::FragmentFollowed, "fragment_followed"),
        (GlobalCounter::PassBackendOpened, "backend_opened"),
        (GlobalCounter::TunnelTooBig, "tunnel_too_big"),
        (GlobalCounter::FlowRaced, "flow_raced"),
    ];
}

/// Fixed seed: every host must hash a flow to the same ring entry, so
/// several LBs behind ECMP agree.
const FLOW_HASH_SEED: u64 = 0x7864_706c_7269_6e67; // "xdplring"

/// Odd multipliers that spread each 64-bit word of an IPv6 key before the
/// words are combined (from the golden ratio and murmur3's constants).
const RING_MUL: [u64; 4] = [
    0x9e37_79b9_7f4a_7c15,
    0xc2b2_ae3d_27d4_eb4f,
    0x1656_67b1_9e37_79f9,
    0x85eb_ca77_c2b2_ae63,
];

/// The hash that picks a flow's ring entry. Inputs are the raw
/// (network-order) header fields, so the data plane hashes without
/// swapping. Public and fixed (gateways behind ECMP must agree), so it
/// needs no strength against a chosen input, only spread: the ports
/// folded into the addresses by a multiply, then one 64-bit finaliser — a
/// dozen BPF instructions, where a jhash round is forty (BPF has no
/// rotate), and the data plane computes it for every packet of a flow
/// (it is part of the flow's tag).
#[inline(always)]
pub const fn flow_hash(key: &FlowKey) -> u32 {
    let ports = ((key.src_port as u64) << 32) | ((key.dst_port as u64) << 16) | key.proto as u64;
    let h = (pair(key.src_addr, key.dst_addr) ^ FLOW_HASH_SEED)
        .wrapping_add(ports.wrapping_mul(RING_MUL[0]));
    (mix64(h) >> 32) as u32
}

/// [`flow_hash`] for IPv6: the four address words spread by independent
/// multiplies (no chain of dependent rounds) and the ports folded in, then
/// one finaliser. Both sides compute it identically.
#[inline(always)]
pub const fn flow_hash6(key: &FlowKey6) -> u32 {
    let s = key.src_addr.words;
    let d = key.dst_addr.words;
    let ports = ((key.src_port as u64) << 32) | ((key.dst_port as u64) << 16) | key.proto as u64;
    let h = pair(s[0], s[1]).wrapping_mul(RING_MUL[0])
        ^ pair(s[2], s[3]).wrapping_mul(RING_MUL[1])
        ^ pair(d[0], d[1]).wrapping_mul(RING_MUL[2])
        ^ pair(d[2], d[3]).wrapping_mul(RING_MUL[3]);
    let h = (h ^ FLOW_HASH_SEED).wrapping_add(ports.wrapping_mul(RING_MUL[0]));
    (mix64(h) >> 32) as u32
}

/// The host part (host order, below `host_bits` ≤ 31) of a `tunnel`
/// pool's outer source for a flow of ring hash `hash`: the outer source is
/// `tunnel_source`'s prefix with this as its host part, so a flow keeps
/// one outer source while the flows of a gateway spread over the prefix
/// (and a backend's NIC spreads them over its queues). The hash's high
/// bits after a multiplicative mix: the ring takes `hash % ring_size`,
/// and these must not follow the backend choice.
#[inline(always)]
pub const fn tunnel_host_part(hash: u32, host_bits: u32) -> u32 {
    if host_bits == 0 || host_bits > 31 {
        return 0;
    }
    hash.wrapping_mul(0x9e37_79b1) >> (32 - host_bits)
}

/// Index into `RINGS` of entry `hash % ring_size` of a VIP's ring `slot`.
#[inline(always)]
pub const fn ring_slot_index(vip_index: u32, slot: u32, ring_size: u32, hash: u32) -> u32 {
    (vip_index * RING_SLOTS + slot) * ring_size + hash % ring_size
}

/// Total `RINGS` entries for a ring size.
pub const fn rings_len(ring_size: u32) -> u32 {
    limits::MAX_VIPS * RING_SLOTS * ring_size
}

/// The backend-side decapsulation program (`xdplb decap`): its own small
/// object and pins, nothing shared with the balancer.
pub mod decap {
    /// The XDP entry point's name in the decap object.
    pub const PROGRAM: &str = "xdplb_decap";
    /// Addresses of this host (network order → 1): only tunnels addressed
    /// to one of them are opened.
    pub const ADDRS: &str = "DECAP_ADDRS";
    /// This host's IPv6 addresses ([`Addr6`](crate::Addr6) → 1): only
    /// IPv6-in-IPv6 tunnels addressed to one of them are opened.
    pub const ADDRS6: &str = "DECAP_ADDRS6";
    /// Per-CPU counters, indexed by [`DecapCounter`].
    pub const STATS: &str = "DECAP_STATS";
    /// Default pin root: decap pins under `<root>/<netns>/<ifname>/` (see
    /// `xdplb decap --help`), so namespaces sharing a bpffs never share maps.
    pub const DEFAULT_PIN_PATH: &str = "/sys/fs/bpf/xdplb-decap";
    pub const MAX_ADDRS: u32 = 256;
    /// Outer sources whose tunnels are opened (`--allow CIDR`): an LPM trie
    /// keyed by prefix length and the IPv4 address as loaded (network
    /// order) → 1. `--allow-any` is 0.0.0.0/0.
    pub const ALLOW: &str = "DECAP_ALLOW";
    /// The IPv6 outer sources whose tunnels are opened: prefix length and
    /// [`Addr6`](crate::Addr6) → 1. `--allow-any` is ::/0.
    pub const ALLOW6: &str = "DECAP_ALLOW6";
    /// Entries of each allow list.
    pub const MAX_ALLOW: u32 = 64;

    #[repr(u32)]
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum DecapCounter {
        /// Not a tunnel for this host: passed untouched.
        Passed = 0,
        /// Outer header stripped, inner packet passed to the kernel.
        Decapsulated,
        /// A tunnel for this host whose inner packet is not a whole IP
        /// packet of the outer header's family: dropped.
        DropMalformed,
        /// A tunnel for this host from an outer source outside `--allow`
        /// (not a gateway): dropped.
        DropSource,
        /// A tunnel from an allowed source whose inner destination is not
        /// an address of this host: dropped.
        DropNotLocal,
        /// Outer header marked CE around an inner packet that is not
        /// ECN-capable (RFC 6040 section 4.2): dropped.
        DropEcn,
    }

    impl DecapCounter {
        pub const COUNT: u32 = DecapCounter::DropEcn as u32 + 1;
        pub const ALL: [(DecapCounter, &'static str); 6] = [
            (DecapCounter::Passed, "passed"),
            (DecapCounter::Decapsulated, "decapsulated"),
            (DecapCounter::DropMalformed, "dropped_malformed"),
            (DecapCounter::DropSource, "dropped_source"),
            (DecapCounter::DropNotLocal, "dropped_not_local"),
            (DecapCounter::DropEcn, "dropped_ecn"),
        ];
    }
}

/// The benchmark harness's frame (`lb-ebpf/src/bench.rs`): the original
/// frame restored before every BPF_PROG_TEST_RUN iteration.
pub mod bench {
    /// The shortest bench frame (the classic 64-byte minimum).
    pub const BENCH_FRAME_LEN: usize = 64;
    /// Room for a full 1500-byte IP packet in its Ethernet frame, rounded
    /// up to whole u64 words.
    pub const BENCH_FRAME_MAX: usize = 1520;
    /// A `vary_period` no run reaches: every iteration a flow not seen
    /// before (the sequence is 31 bits wide).
    pub const VARY_UNBOUNDED: u64 = 0x7fff_ffff;

    #[repr(C)]
    #[derive(Clone, Copy, Debug)]
    pub struct BenchFrame {
        /// 0: the frame as it is. N > 0: write a per-iteration sequence
        /// number, cycling through 1..=N, into the source port (low 16
        /// bits) and two octets of the source address, so the iterations
        /// are N different flows ([`VARY_UNBOUNDED`]: a new flow each).
        pub vary_period: u64,
        /// Bytes of `bytes` that make the frame (the test run's frame must
        /// be exactly this long).
        pub len: u64,
        pub bytes: [u8; BENCH_FRAME_MAX],
    }
    const _: () = assert!(core::mem::size_of::<BenchFrame>() == 16 + BENCH_FRAME_MAX);
}

/// Counters an explain run lists, in the order the program would have
/// moved them (more are dropped and counted in `counters_lost`).
pub const EXPLAIN_COUNTERS: usize = 16;
/// "None" in an [`ExplainTrace`] field: the step did not run.
pub const EXPLAIN_NONE: u32 = u32::MAX;

/// `ExplainTrace::programs` bits: which of the programs ran (in the
/// explain object, the same entry points as the data plane's).
pub const EXPLAIN_PROG_MAIN: u32 = 1 << 0;
pub const EXPLAIN_PROG_UDP4: u32 = 1 << 1;
pub const EXPLAIN_PROG_IPV6: u32 = 1 << 2;
pub const EXPLAIN_PROG_UDP6: u32 = 1 << 3;
pub const EXPLAIN_PROG_ICMP6: u32 = 1 << 4;
pub const EXPLAIN_PROG_FRAG4: u32 = 1 << 5;
pub const EXPLAIN_PROG_FRAG6: u32 = 1 << 6;
pub const EXPLAIN_PROG_UDP4_REPLY: u32 = 1 << 7;

/// `ExplainTrace::pinned`: what the flow's entry said.
/// Still its backend's: kept.
pub const EXPLAIN_PIN_KEEP: u32 = 0;
/// Its backend is down: selected again from the ring.
pub const EXPLAIN_PIN_DOWN: u32 = 1;
/// Closed and past its linger: a new flow.
pub const EXPLAIN_PIN_CLOSED: u32 = 2;
/// Idle past the VIP's `flow_idle_ms`: a new flow.
pub const EXPLAIN_PIN_IDLE: u32 = 3;
/// Its backend slot was freed or reused since: a new flow.
pub const EXPLAIN_PIN_STALE: u32 = 4;
/// A SYN on a closed connection's entry: the new connection takes it.
pub const EXPLAIN_PIN_REOPENED: u32 = 5;

/// What `xdplb explain` reads back after running a frame through the
/// explain object (the data plane's code built with its writes turned
/// off, see lb-ebpf's `explain.rs`): each step's inputs and outcome, and
/// every counter the real program would have moved. User space fills it
/// with [`EXPLAIN_NONE`] (and zero counts) before each run.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExplainTrace {
    /// `EXPLAIN_PROG_*` bits.
    pub programs: u32,
    /// Counters the program would have moved (`GlobalCounter` values).
    pub n_counters: u32,
    pub counters: [u16; EXPLAIN_COUNTERS],
    /// The flow table's two buckets for the flow's tag (the last lookup).
    pub bucket_a: u32,
    pub bucket_b: u32,
    /// The way (0–15 first bucket, 16–31 second) holding the flow.
    pub flow_hit: u32,
    /// The way a new entry would take.
    pub flow_victim: u32,
    /// The hit entry's backend reference and `FLOW_F_*` flags.
    pub entry_ref: u32,
    pub entry_flags: u32,
    /// `EXPLAIN_PIN_*`.
    pub pinned: u32,
    /// The way a new entry was to be written to (if the insert cap let it).
    pub insert_way: u32,
    /// The ring entry read: its index in `RINGS` and what it held
    /// (`NO_BACKEND` for an empty entry: `ring_index` tells whether it
    /// was read).
    pub ring_index: u32,
    pub ring_ref: u32,
    /// The VIP and backend slot the packet was counted for.
    pub vip_index: u32,
    pub backend: u32,
    /// Whether it counted as a new flow.
    pub new_flow: u32,
    /// A reply: the backend slot it came from.
    pub reply_backend: u32,
    /// Counters past `EXPLAIN_COUNTERS`.
    pub counters_lost: u32,
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<ExplainTrace>() == 104);

impl ExplainTrace {
    /// Before a run: every step "did not run".
    pub const EMPTY: ExplainTrace = ExplainTrace {
        programs: 0,
        n_counters: 0,
        counters: [0; EXPLAIN_COUNTERS],
        bucket_a: EXPLAIN_NONE,
        bucket_b: EXPLAIN_NONE,
        flow_hit: EXPLAIN_NONE,
        flow_victim: EXPLAIN_NONE,
        entry_ref: EXPLAIN_NONE,
        entry_flags: EXPLAIN_NONE,
        pinned: EXPLAIN_NONE,
        insert_way: EXPLAIN_NONE,
        ring_index: EXPLAIN_NONE,
        ring_ref: EXPLAIN_NONE,
        vip_index: EXPLAIN_NONE,
        backend: EXPLAIN_NONE,
        new_flow: 0,
        reply_backend: EXPLAIN_NONE,
        counters_lost: 0,
        _pad: 0,
    };
}

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: all are #[repr(C)] of integers with explicit padding fields, so
    // every bit pattern is valid and there are no implicit holes.
    unsafe impl aya::Pod for L4Addr {}
    unsafe impl aya::Pod for Addr6 {}
    unsafe impl aya::Pod for L4Addr6 {}
    unsafe impl aya::Pod for FlowKey6 {}
    unsafe impl aya::Pod for ReplyEntry6 {}
    unsafe impl aya::Pod for VipMeta {}
    unsafe impl aya::Pod for BackendMeta {}
    unsafe impl aya::Pod for FlowKey {}
    unsafe impl aya::Pod for FlowSlot {}
    unsafe impl aya::Pod for FlowBucket {}
    unsafe impl aya::Pod for ReplyEntry {}
    unsafe impl aya::Pod for FibEntry {}
    unsafe impl aya::Pod for VipCounters {}
    unsafe impl aya::Pod for BackendCounters {}
    unsafe impl aya::Pod for Name {}
    unsafe impl aya::Pod for IfaceMeta {}
    unsafe impl aya::Pod for RateWindow {}
    unsafe impl aya::Pod for VipAddr {}
    unsafe impl aya::Pod for AnswerTokens {}
    unsafe impl aya::Pod for FragKey {}
    unsafe impl aya::Pod for FragKey6 {}
    unsafe impl aya::Pod for FragEntry {}
    unsafe impl aya::Pod for bench::BenchFrame {}
    unsafe impl aya::Pod for ExplainTrace {}
}
