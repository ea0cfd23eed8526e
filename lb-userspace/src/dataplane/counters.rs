//! The program's counters, read from the pinned maps with no controller.
use std::{collections::HashMap as StdHashMap, net::SocketAddr, path::Path};

use aya::maps::{Array, HashMap, MapData, PerCpuArray};
use lb_common::{
    limits::{MAX_BACKENDS, MAX_VIPS},
    maps, Addr6, BackendCounters, BackendMeta, GlobalCounter, L4Addr, L4Addr6, Name, VipCounters,
    VipMeta,
};

use super::{backend_addr, endpoint4, endpoint6, map_err, open_pinned, DataplaneError, Protocol};

/// A counter snapshot, summed over CPUs.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Counters {
    pub global: Vec<u64>,
    /// (vip index, pool name, vip, counters), for VIPs in the map.
    pub vips: Vec<VipStats>,
    pub backends: Vec<BackendStats>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct VipStats {
    pub index: u32,
    pub pool: String,
    pub vip: SocketAddr,
    pub protocol: Protocol,
    pub counters: VipCounters,
}

#[derive(Clone, Debug, PartialEq)]
pub struct BackendStats {
    pub slot: u32,
    pub pool: String,
    pub name: String,
    pub addr: SocketAddr,
    pub state: u8,
    pub counters: BackendCounters,
}

impl Counters {
    pub fn get(&self, c: GlobalCounter) -> u64 {
        self.global.get(c as usize).copied().unwrap_or(0)
    }
}

/// Reads counters from the pinned maps; needs no controller.
pub struct CounterReader {
    global: PerCpuArray<MapData, u64>,
    vip_stats: PerCpuArray<MapData, VipCounters>,
    backend_stats: PerCpuArray<MapData, BackendCounters>,
    vips: HashMap<MapData, L4Addr, VipMeta>,
    vips6: HashMap<MapData, L4Addr6, VipMeta>,
    backends: Array<MapData, BackendMeta>,
    backend_addrs6: Array<MapData, Addr6>,
    names: Array<MapData, Name>,
}

impl CounterReader {
    pub fn open(pin_path: &Path) -> Result<CounterReader, DataplaneError> {
        Ok(CounterReader {
            global: open_pinned(pin_path, maps::GLOBAL_STATS)?,
            vip_stats: open_pinned(pin_path, maps::VIP_STATS)?,
            backend_stats: open_pinned(pin_path, maps::BACKEND_STATS)?,
            vips: open_pinned(pin_path, maps::VIPS)?,
            vips6: open_pinned(pin_path, maps::VIPS6)?,
            backends: open_pinned(pin_path, maps::BACKENDS)?,
            backend_addrs6: open_pinned(pin_path, maps::BACKEND_ADDRS6)?,
            names: open_pinned(pin_path, maps::NAMES)?,
        })
    }

    fn name(&self, index: u32) -> String {
        self.names
            .get(&index, 0)
            .map(|n| n.as_str().to_string())
            .unwrap_or_default()
    }

    pub fn read(&self) -> Result<Counters, DataplaneError> {
        let mut global = Vec::with_capacity(GlobalCounter::COUNT as usize);
        for i in 0..GlobalCounter::COUNT {
            let per_cpu = self
                .global
                .get(&i, 0)
                .map_err(map_err(maps::GLOBAL_STATS))?;
            global.push(per_cpu.iter().sum());
        }
        // The program counts verdicts only; every packet gets exactly one.
        global[GlobalCounter::Rx as usize] = GlobalCounter::VERDICTS
            .iter()
            .map(|&v| global[v as usize])
            .sum();
        let mut vips = Vec::new();
        let v4 = self.vips.iter().map(|i| {
            i.map(|(k, m)| (endpoint4(&k), m))
                .map_err(map_err(maps::VIPS))
        });
        let v6 = self.vips6.iter().map(|i| {
            i.map(|(k, m)| (endpoint6(&k), m))
                .map_err(map_err(maps::VIPS6))
        });
        for item in v4.chain(v6) {
            let (endpoint, meta) = item?;
            let Some(endpoint) = endpoint else {
                continue;
            };
            if meta.index >= MAX_VIPS {
                // Only a bug writes that (the program drops its packets as
                // internal errors); one bad entry must not hide the rest.
                continue;
            }
            let per_cpu = self
                .vip_stats
                .get(&meta.index, 0)
                .map_err(map_err(maps::VIP_STATS))?;
            let mut c = VipCounters::default();
            for v in per_cpu.iter() {
                c.packets += v.packets;
                c.bytes += v.bytes;
                c.new_flows += v.new_flows;
                c.rejected += v.rejected;
            }
            vips.push(VipStats {
                index: meta.index,
                pool: self.name(meta.index),
                vip: endpoint.addr,
                protocol: endpoint.protocol,
                counters: c,
            });
        }
        vips.sort_by_key(|v| v.index);
        let pool_of: StdHashMap<u32, String> =
            vips.iter().map(|v| (v.index, v.pool.clone())).collect();
        let mut backends = Vec::new();
        for slot in 0..MAX_BACKENDS {
            let meta = self
                .backends
                .get(&slot, 0)
                .map_err(map_err(maps::BACKENDS))?;
            if meta.state == lb_common::BACKEND_FREE {
                continue;
            }
            let per_cpu = self
                .backend_stats
                .get(&slot, 0)
                .map_err(map_err(maps::BACKEND_STATS))?;
            let mut c = BackendCounters::default();
            for v in per_cpu.iter() {
                c.packets += v.packets;
                c.bytes += v.bytes;
                c.new_flows += v.new_flows;
                c.reply_packets += v.reply_packets;
                c.reply_bytes += v.reply_bytes;
            }
            backends.push(BackendStats {
                slot,
                pool: pool_of
                    .get(&meta.vip_index)
                    .cloned()
                    .unwrap_or_else(|| self.name(meta.vip_index)),
                name: self.name(MAX_VIPS + slot),
                addr: backend_addr(&meta, || self.backend_addrs6.get(&slot, 0).ok()),
                state: meta.state,
                counters: c,
            });
        }
        Ok(Counters {
            global,
            vips,
            backends,
        })
    }
}
