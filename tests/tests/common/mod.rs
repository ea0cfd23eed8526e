//! Helpers shared by the flow-table tests (`flood.rs`, `many_flows.rs`):
//! reading the data plane's pinned maps directly, where `xdplb stats`
//! does not show what a test must prove.

use std::{collections::HashMap as StdHashMap, net::SocketAddrV4, path::Path};

use anyhow::{Context, Result};
use aya::maps::{Map, MapData, PerCpuArray};
use lb_common::{maps, FlowKey, GlobalCounter, BACKEND_SLOT_MASK};
use xdplb::dataplane::{CounterReader, Counters, FlowTable};

/// The data plane's counters, read from its pins.
pub fn counters(pin_path: &Path) -> Result<Counters> {
    Ok(CounterReader::open(pin_path)?.read()?)
}

/// The flow-table key of a TCP connection from `client` to `vip`.
pub fn flow_key(client: SocketAddrV4, vip: SocketAddrV4) -> FlowKey {
    FlowKey {
        src_addr: u32::from_ne_bytes(client.ip().octets()),
        dst_addr: u32::from_ne_bytes(vip.ip().octets()),
        src_port: client.port().to_be(),
        dst_port: vip.port().to_be(),
        proto: libc::IPPROTO_TCP as u8,
        _pad: [0; 3],
    }
}

/// The pinned flow table.
pub fn flow_table(pin_path: &Path) -> Result<FlowTable> {
    FlowTable::open(pin_path)
        .with_context(|| format!("open the flow table under {}", pin_path.display()))
}

/// For each of `keys`, the backend slot its flow-table entry pins it to
/// (`None`: not in the table). One lookup a key.
pub fn pinned_slots(pin_path: &Path, keys: &[FlowKey]) -> Result<Vec<Option<u32>>> {
    let table = flow_table(pin_path)?;
    Ok(keys
        .iter()
        .map(|k| table.get(k).map(|e| e.backend & BACKEND_SLOT_MASK))
        .collect())
}

/// Backend slot by backend name, from the pinned maps.
pub fn slots_by_name(pin_path: &Path) -> Result<StdHashMap<String, u32>> {
    Ok(counters(pin_path)?
        .backends
        .into_iter()
        .map(|b| (b.name, b.slot))
        .collect())
}

/// One global counter per CPU (the program counts per CPU).
pub fn per_cpu(pin_path: &Path, c: GlobalCounter) -> Result<Vec<u64>> {
    let path = pin_path.join(maps::GLOBAL_STATS);
    let md = MapData::from_pin(&path).with_context(|| format!("open {}", path.display()))?;
    let stats: PerCpuArray<MapData, u64> = PerCpuArray::try_from(Map::from_map_data(md)?)?;
    Ok(stats.get(&(c as u32), 0)?.iter().copied().collect())
}
