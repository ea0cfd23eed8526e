//! Katran's XDP balancer, loaded for the side-by-side benchmark
//! (`dataplane_bench --peer OBJECT`).
//!
//! The object is Katran's `katran/lib/bpf/balancer.bpf.c`, built outside
//! this repository with Katran's own flags (docs/BENCHMARKS.md gives the
//! commands); nothing of Katran is in this repository. This loader sets it
//! up the way Katran's own `KatranLb` does for one VIP: the VIP in
//! `vip_map`, the reals in `reals` (ids from 1, as Katran numbers them),
//! the VIP's ring in `ch_rings`, the default router's MAC in `ctl_array`,
//! and one LRU hash per CPU in `lru_mapping` (Katran's per-core
//! connection table; each of `lru_size` entries here). Every layout below
//! mirrors `balancer_structs.h` and `balancer_consts.h` of that build;
//! [`Katran::load`] checks the map sizes the consts decide.

use std::net::{IpAddr, SocketAddr};

use anyhow::{bail, ensure, Context, Result};
use aya::{
    maps::{Array, ArrayOfMaps, HashMap, Map, MapData, PerCpuArray},
    programs::Xdp,
    util::nr_cpus,
    Ebpf, EbpfLoader, Pod,
};

/// `balancer_consts.h` defaults, which the build must keep (checked
/// against the map sizes they decide).
pub const MAX_VIPS: u32 = 512;
pub const RING_SIZE: u32 = 65537;

/// Indices into the `stats` map past `MAX_VIPS` (`balancer_consts.h`).
/// v1: packets of a VIP; v2: of those, LRU misses.
pub const LRU_CNTRS: u32 = MAX_VIPS;
/// v1: packets passed to the kernel.
pub const XDP_PASS_CNTR: u32 = MAX_VIPS + 19;

/// `real_definition.flags`: the real is an IPv6 address (IPv6-in-IPv6).
const F_IPV6: u8 = 1;
const BPF_MAP_TYPE_LRU_HASH: u32 = 9;

/// `struct vip_definition` (20 bytes): address (IPv4 in the first four
/// octets), port in network order, protocol.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct VipDefinition {
    addr: [u8; 16],
    port: [u8; 2],
    proto: u8,
    pad: u8,
}

/// `struct vip_meta`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct VipMeta {
    flags: u32,
    vip_num: u32,
}

/// `struct real_definition` (20 bytes).
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct RealDefinition {
    addr: [u8; 16],
    flags: u8,
    pad: [u8; 3],
}

/// `struct lb_stats`.
#[repr(C)]
#[derive(Clone, Copy, Default, Debug, PartialEq)]
pub struct LbStats {
    pub v1: u64,
    pub v2: u64,
}

/// `struct ctl_value`: the default router's MAC at position 0.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CtlValue {
    mac: [u8; 6],
    pad: [u8; 2],
}

/// `struct flow_key` (40 bytes: 37 and padding, zeroed as Katran's
/// `packet_description pckt = {}` zeroes it).
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub struct FlowKey {
    pub src: [u8; 16],
    pub dst: [u8; 16],
    /// Source then destination port, network order.
    pub ports: [u8; 4],
    pub proto: u8,
    pub pad: [u8; 3],
}

/// `struct real_pos_lru`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub struct RealPosLru {
    pub pos: u32,
    pub pad: u32,
    pub atime: u64,
}

// SAFETY: #[repr(C)] integers and byte arrays with explicit padding: every
// bit pattern is valid and there are no implicit holes.
unsafe impl Pod for VipDefinition {}
unsafe impl Pod for VipMeta {}
unsafe impl Pod for RealDefinition {}
unsafe impl Pod for LbStats {}
unsafe impl Pod for CtlValue {}
unsafe impl Pod for FlowKey {}
unsafe impl Pod for RealPosLru {}

const _: () = assert!(std::mem::size_of::<VipDefinition>() == 20);
const _: () = assert!(std::mem::size_of::<RealDefinition>() == 20);
const _: () = assert!(std::mem::size_of::<FlowKey>() == 40);
const _: () = assert!(std::mem::size_of::<RealPosLru>() == 16);

/// One VIP: its number (its ring is `ch_rings[vip_num * RING_SIZE ..]`)
/// and its reals, spread round-robin over the ring as the xdplb bench
/// spreads its backends.
pub struct Vip {
    pub num: u32,
    pub addr: SocketAddr,
    pub proto: u8,
    pub reals: Vec<IpAddr>,
}

fn octets16(ip: IpAddr) -> [u8; 16] {
    let mut a = [0u8; 16];
    match ip {
        IpAddr::V4(v4) => a[..4].copy_from_slice(&v4.octets()),
        IpAddr::V6(v6) => a = v6.octets(),
    }
    a
}

pub struct Katran {
    ebpf: Ebpf,
    lru_mapping: ArrayOfMaps<MapData, HashMap<MapData, FlowKey, RealPosLru>>,
    lru_size: u32,
    /// Each CPU's connection table, by CPU number.
    lrus: Vec<HashMap<MapData, FlowKey, RealPosLru>>,
    stats: PerCpuArray<MapData, LbStats>,
}

impl Katran {
    /// Loads `object`'s `balancer_ingress`, publishes `vips`, and gives
    /// each CPU an LRU of `lru_size` entries.
    pub fn load(
        object: &std::path::Path,
        lru_size: u32,
        router_mac: [u8; 6],
        vips: &[Vip],
    ) -> Result<Katran> {
        let bytes = std::fs::read(object).with_context(|| format!("read {}", object.display()))?;
        let mut ebpf = EbpfLoader::new()
            .load(&bytes)
            .with_context(|| format!("load the maps of {}", object.display()))?;
        {
            let prog: &mut Xdp = ebpf
                .program_mut("balancer_ingress")
                .with_context(|| format!("{}: no program balancer_ingress", object.display()))?
                .try_into()?;
            prog.load()
                .with_context(|| format!("verify balancer_ingress of {}", object.display()))?;
        }
        let take = |ebpf: &mut Ebpf, name: &str| -> Result<Map> {
            ebpf.take_map(name)
                .with_context(|| format!("{}: no map {name}", object.display()))
        };

        let stats: PerCpuArray<MapData, LbStats> =
            PerCpuArray::try_from(take(&mut ebpf, "stats")?)?;
        ensure!(
            stats.len() == 2 * MAX_VIPS,
            "{}: stats has {} entries, not 2 × MAX_VIPS ({MAX_VIPS}): \
             build with balancer_consts.h's MAX_VIPS",
            object.display(),
            stats.len()
        );
        let mut rings: Array<MapData, u32> = Array::try_from(take(&mut ebpf, "ch_rings")?)?;
        ensure!(
            rings.len() == MAX_VIPS * RING_SIZE,
            "{}: ch_rings has {} entries, not MAX_VIPS × RING_SIZE: \
             build with balancer_consts.h's RING_SIZE ({RING_SIZE})",
            object.display(),
            rings.len()
        );

        let mut vip_map: HashMap<MapData, VipDefinition, VipMeta> =
            HashMap::try_from(take(&mut ebpf, "vip_map")?)?;
        let mut reals: Array<MapData, RealDefinition> = Array::try_from(take(&mut ebpf, "reals")?)?;
        let mut next_real = 1u32;
        for vip in vips {
            let key = VipDefinition {
                addr: octets16(vip.addr.ip()),
                port: vip.addr.port().to_be_bytes(),
                proto: vip.proto,
                pad: 0,
            };
            vip_map.insert(
                key,
                VipMeta {
                    flags: 0,
                    vip_num: vip.num,
                },
                0,
            )?;
            let ids: Vec<u32> = vip
                .reals
                .iter()
                .map(|&ip| {
                    let id = next_real;
                    next_real += 1;
                    let def = RealDefinition {
                        addr: octets16(ip),
                        flags: if ip.is_ipv6() { F_IPV6 } else { 0 },
                        pad: [0; 3],
                    };
                    reals.set(id, def, 0).map(|()| id)
                })
                .collect::<Result<_, _>>()?;
            ensure!(!ids.is_empty(), "VIP {} has no reals", vip.addr);
            for i in 0..RING_SIZE {
                rings.set(vip.num * RING_SIZE + i, ids[i as usize % ids.len()], 0)?;
            }
        }

        let mut ctl: Array<MapData, CtlValue> = Array::try_from(take(&mut ebpf, "ctl_array")?)?;
        ctl.set(
            0,
            CtlValue {
                mac: router_mac,
                pad: [0; 2],
            },
            0,
        )?;

        let lru_mapping = ArrayOfMaps::try_from(take(&mut ebpf, "lru_mapping")?)?;
        let mut katran = Katran {
            ebpf,
            lru_mapping,
            lru_size,
            lrus: Vec::new(),
            stats,
        };
        katran.fresh_lrus()?;
        // The loaded program holds its own references to the maps dropped
        // here, so they live as long as it does.
        Ok(katran)
    }

    /// Gives every CPU a new, empty LRU (as KatranLb::createLruMap: an LRU
    /// hash per forwarding core, no flags, so one set of LRU lists within
    /// each core's map).
    pub fn fresh_lrus(&mut self) -> Result<()> {
        let cpus = nr_cpus().map_err(|(_, e)| e)?;
        self.lrus.clear();
        for cpu in 0..cpus as u32 {
            let def = aya_obj::Map::new_from_params(
                BPF_MAP_TYPE_LRU_HASH,
                std::mem::size_of::<FlowKey>() as u32,
                std::mem::size_of::<RealPosLru>() as u32,
                self.lru_size,
                0,
            );
            let data = MapData::create(def, &format!("katran_lru{cpu}"), None)
                .context("create a per-CPU LRU for Katran")?;
            let lru: HashMap<MapData, FlowKey, RealPosLru> =
                HashMap::try_from(Map::LruHashMap(data))?;
            self.lru_mapping
                .set(cpu, &lru, 0)
                .context("put a per-CPU LRU into lru_mapping")?;
            self.lrus.push(lru);
        }
        Ok(())
    }

    pub fn program(&self) -> Result<&Xdp> {
        Ok(self
            .ebpf
            .program("balancer_ingress")
            .context("balancer_ingress")?
            .try_into()?)
    }

    /// `stats[index]` summed over CPUs.
    pub fn stat(&self, index: u32) -> Result<LbStats> {
        let per_cpu = self.stats.get(&index, 0)?;
        Ok(per_cpu.iter().fold(LbStats::default(), |a, s| LbStats {
            v1: a.v1 + s.v1,
            v2: a.v2 + s.v2,
        }))
    }

    /// Whether `cpu`'s connection table holds `key`.
    pub fn lru_holds(&self, cpu: usize, key: &FlowKey) -> Result<bool> {
        let lru = self.lrus.get(cpu).context("no LRU for that CPU")?;
        match lru.get(key, 0) {
            Ok(_) => Ok(true),
            Err(aya::maps::MapError::KeyNotFound) => Ok(false),
            Err(e) => bail!("look up a flow in Katran's LRU of CPU {cpu}: {e}"),
        }
    }
}

/// Katran's flow key of an Ethernet frame of IPv4 or IPv6 TCP/UDP (no
/// options or extension headers), as its `parse_l3_headers` and
/// `parse_tcp`/`parse_udp` fill it.
pub fn flow_key(frame: &[u8]) -> Result<FlowKey> {
    let mut k = FlowKey::default();
    let l4 = match u16::from_be_bytes([frame[12], frame[13]]) {
        0x0800 => {
            k.src[..4].copy_from_slice(&frame[26..30]);
            k.dst[..4].copy_from_slice(&frame[30..34]);
            k.proto = frame[23];
            14 + 20
        }
        0x86dd => {
            k.src.copy_from_slice(&frame[22..38]);
            k.dst.copy_from_slice(&frame[38..54]);
            k.proto = frame[20];
            14 + 40
        }
        t => bail!("ethertype {t:#06x} is neither IPv4 nor IPv6"),
    };
    k.ports.copy_from_slice(&frame[l4..l4 + 4]);
    Ok(k)
}
