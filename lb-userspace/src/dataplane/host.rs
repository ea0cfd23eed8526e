//! What the program must know of this host: the attached interfaces' MACs,
//! the redirect targets, and the host's own addresses.
use std::{
    collections::HashMap as StdHashMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use aya::maps::{HashMap, MapData};
use lb_common::{maps, Addr6, IfaceMeta, IFACE_SLOTS};

use super::{map_err, Dataplane, DataplaneError};

impl Dataplane {
    /// Tells the program about this host: the MAC of each attached
    /// interface (frames for other MACs pass), the redirect targets
    /// (`TX_PORTS`), and the host's IPv4 addresses (traffic from a backend
    /// to one of them is ours, not a reply). Entries no longer true are
    /// removed. Cheap enough to repeat every few seconds.
    pub fn sync_host(&mut self, interfaces: &[String]) -> Result<(), DataplaneError> {
        let mut wanted = StdHashMap::new();
        for iface in interfaces {
            let io = |source| DataplaneError::Interface {
                iface: iface.clone(),
                source,
            };
            let ifindex = ifindex(iface).map_err(io)?;
            wanted.insert(ifindex, hw_addr(iface).map_err(io)?);
        }
        for slot in 0..IFACE_SLOTS {
            let meta = self.ifaces.get(&slot, 0).map_err(map_err(maps::IFACES))?;
            if meta.ifindex != 0 && !wanted.contains_key(&meta.ifindex) {
                self.ifaces
                    .set(slot, IfaceMeta::default(), 0)
                    .map_err(map_err(maps::IFACES))?;
                let _ = self.tx_ports.remove(meta.ifindex);
            }
        }
        for (&ifindex, &mac) in &wanted {
            let slot = ifindex % IFACE_SLOTS;
            let meta = IfaceMeta {
                ifindex,
                mac,
                _pad: [0; 2],
            };
            let current = self.ifaces.get(&slot, 0).map_err(map_err(maps::IFACES))?;
            if current.ifindex != 0
                && current.ifindex != ifindex
                && wanted.contains_key(&current.ifindex)
            {
                // The program then takes every frame on this interface as
                // addressed to it (no promiscuous-mode filter).
                tracing::warn!(
                    ifindex,
                    other = current.ifindex,
                    "two interfaces share a MAC-filter slot; frames for other hosts on the \
                     second are not told apart"
                );
            } else if current != meta {
                self.ifaces
                    .set(slot, meta, 0)
                    .map_err(map_err(maps::IFACES))?;
            }
            if self.tx_ports.get(ifindex, 0).map(|v| v.if_index).ok() != Some(ifindex) {
                self.tx_ports
                    .insert(ifindex, ifindex, None, 0)
                    .map_err(|e| DataplaneError::TxPort {
                        map: maps::TX_PORTS,
                        source: Box::new(e),
                    })?;
            }
        }
        let (local, local6) =
            local_addrs().map_err(|source| DataplaneError::LocalAddrs { source })?;
        sync_set(&mut self.local_addrs, local, maps::LOCAL_ADDRS)?;
        sync_set(&mut self.local_addrs6, local6, maps::LOCAL_ADDRS6)
    }

    /// The host's other MACs (`[dataplane] extra_macs`): frames to them are
    /// this host's on every attached interface. Entries no longer wanted
    /// are removed.
    pub fn sync_extra_macs(&mut self, macs: &[[u8; 6]]) -> Result<(), DataplaneError> {
        let wanted = macs.iter().map(|&m| lb_common::mac_key(m)).collect();
        sync_set(&mut self.extra_macs, wanted, maps::EXTRA_MACS)
    }

    /// The host addresses the program knows (`LOCAL_ADDRS`, `LOCAL_ADDRS6`).
    pub fn local_addrs(&self) -> Vec<IpAddr> {
        let v4 = self.local_addrs.keys().filter_map(Result::ok);
        let v6 = self.local_addrs6.keys().filter_map(Result::ok);
        v4.map(|a| IpAddr::V4(Ipv4Addr::from(a.to_ne_bytes())))
            .chain(v6.map(|a| IpAddr::V6(Ipv6Addr::from(a.octets()))))
            .collect()
    }
}

/// Makes the set `map` (key → 1) hold exactly `wanted`.
fn sync_set<K: aya::Pod + PartialEq>(
    map: &mut HashMap<MapData, K, u32>,
    wanted: Vec<K>,
    name: &'static str,
) -> Result<(), DataplaneError> {
    let known: Vec<K> = map.keys().filter_map(Result::ok).collect();
    for k in &known {
        if !wanted.contains(k) {
            let _ = map.remove(k);
        }
    }
    for k in wanted {
        if !known.contains(&k) {
            map.insert(k, 1, 0).map_err(map_err(name))?;
        }
    }
    Ok(())
}

/// The ifindex of `iface` in this thread's network namespace (sysfs may
/// show another namespace's).
pub(super) fn ifindex(iface: &str) -> std::io::Result<u32> {
    let name = std::ffi::CString::new(iface).map_err(std::io::Error::other)?;
    // SAFETY: valid C string.
    match unsafe { libc::if_nametoindex(name.as_ptr()) } {
        0 => Err(std::io::Error::last_os_error()),
        i => Ok(i),
    }
}

/// The hardware address of `iface` (SIOCGIFHWADDR).
fn hw_addr(iface: &str) -> std::io::Result<[u8; 6]> {
    // SAFETY: plain ioctl on a datagram socket with a zeroed ifreq whose
    // name we fill (NUL-terminated, within IFNAMSIZ).
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let mut ifr: libc::ifreq = std::mem::zeroed();
        for (d, s) in ifr
            .ifr_name
            .iter_mut()
            .zip(iface.bytes().take(libc::IFNAMSIZ - 1))
        {
            *d = s as libc::c_char;
        }
        let rc = libc::ioctl(fd, libc::SIOCGIFHWADDR, &mut ifr);
        let err = std::io::Error::last_os_error();
        libc::close(fd);
        if rc != 0 {
            return Err(err);
        }
        let sa = ifr.ifr_ifru.ifru_hwaddr.sa_data;
        let mut mac = [0u8; 6];
        for (m, b) in mac.iter_mut().zip(sa.iter()) {
            *m = *b as u8;
        }
        Ok(mac)
    }
}

/// Every IPv4 and IPv6 address configured in this network namespace, as
/// `LOCAL_ADDRS` and `LOCAL_ADDRS6` key them (if-addrs).
pub(crate) fn local_addrs() -> std::io::Result<(Vec<u32>, Vec<Addr6>)> {
    let mut out = Vec::new();
    let mut out6 = Vec::new();
    for iface in if_addrs::get_if_addrs()? {
        match iface.ip() {
            IpAddr::V4(a) => {
                let addr = u32::from_ne_bytes(a.octets());
                if !out.contains(&addr) {
                    out.push(addr);
                }
            }
            IpAddr::V6(a) => {
                let addr = Addr6::from_octets(a.octets());
                if !out6.contains(&addr) {
                    out6.push(addr);
                }
            }
        }
    }
    Ok((out, out6))
}
