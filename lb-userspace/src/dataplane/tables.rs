//! Reading and writing the balancing maps: VIPs and their rings, backend
//! slots, replies, names, and the address filter kept in step with them.
use std::net::{IpAddr, Ipv6Addr, SocketAddr, SocketAddrV6};

use aya::maps::MapError;
use lb_common::{
    addr_filter_word, addr_filter_word6, backend_ref, limits::MAX_BACKENDS, maps, ref_slot,
    BackendMeta, Name, ReplyEntry, ReplyEntry6, VipAddr, VipMeta, ADDR_FILTER_BACKENDS,
    ADDR_FILTER_BACKENDS6, ADDR_FILTER_LEN, ADDR_FILTER_VIPS6, GENERATIONS, NO_BACKEND, RING_SLOTS,
};

use super::{
    addr6, backend_addr, endpoint4, endpoint6, key_of,
    keys::{socket_addr, socket_addr6},
    map_err, BackendSlot, Dataplane, DataplaneError, Endpoint, Key,
};

/// Which addresses of `ADDR_FILTER` a key sets: those of `VIPS`/`VIPS6`
/// (packets to them) or of `REPLIES`/`REPLIES6` (packets from them).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum FilterSide {
    Vips = 0,
    Backends = 1,
}

/// Where `key`'s address sits in `ADDR_FILTER`: its word's index and bit.
fn filter_bit(side: FilterSide, key: &Key) -> (u32, u64) {
    let (quarter, (word, bit)) = match (side, key) {
        (FilterSide::Vips, Key::V4(k)) => (0, addr_filter_word(k.addr)),
        (FilterSide::Backends, Key::V4(k)) => (ADDR_FILTER_BACKENDS, addr_filter_word(k.addr)),
        (FilterSide::Vips, Key::V6(k)) => (ADDR_FILTER_VIPS6, addr_filter_word6(&k.addr)),
        (FilterSide::Backends, Key::V6(k)) => (ADDR_FILTER_BACKENDS6, addr_filter_word6(&k.addr)),
    };
    (quarter + word, bit)
}

/// A key's address.
fn key_addr(key: &Key) -> IpAddr {
    match key {
        Key::V4(k) => IpAddr::V4(socket_addr(k).ip().to_owned()),
        Key::V6(k) => IpAddr::V6(socket_addr6(k).ip().to_owned()),
    }
}

impl Dataplane {
    /// The VIPs currently in the maps (both families), with their meta.
    /// An entry of a protocol xdplb never writes is skipped.
    pub fn read_vips(&self) -> Result<Vec<(Endpoint, VipMeta)>, DataplaneError> {
        read_vips(&self.vips, &self.vips6)
    }

    /// The reply entries in the maps (both families): (backend endpoint,
    /// VIP address, backend slot, VIP index). An entry of a protocol xdplb
    /// never writes is skipped.
    pub fn read_replies(&self) -> Result<Vec<(Endpoint, SocketAddr, u32, u32)>, DataplaneError> {
        let mut out = Vec::new();
        for item in self.replies.iter() {
            let (k, r) = item.map_err(map_err(maps::REPLIES))?;
            let vip = SocketAddr::V4(socket_addr(&lb_common::L4Addr {
                addr: r.vip_addr,
                port: r.vip_port,
                proto: k.proto,
                _pad: 0,
            }));
            out.extend(endpoint4(&k).map(|e| (e, vip, r.backend, r.vip_index)));
        }
        for item in self.replies6.iter() {
            let (k, r) = item.map_err(map_err(maps::REPLIES6))?;
            let vip = SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(r.vip_addr.octets()),
                u16::from_be(r.vip_port),
                0,
                0,
            ));
            out.extend(endpoint6(&k).map(|e| (e, vip, r.backend, r.vip_index)));
        }
        Ok(out)
    }

    /// All backend slots in use.
    pub fn read_backends(&self) -> Result<Vec<BackendSlot>, DataplaneError> {
        let mut out = Vec::new();
        for slot in 0..MAX_BACKENDS {
            let meta = self
                .backends
                .get(&slot, 0)
                .map_err(map_err(maps::BACKENDS))?;
            if meta.state != lb_common::BACKEND_FREE {
                let v6 = || self.backend_addrs6.get(&slot, 0).ok();
                out.push(BackendSlot {
                    slot,
                    vip_index: meta.vip_index,
                    addr: backend_addr(&meta, v6),
                    state: meta.state,
                    flags: meta.flags,
                });
            }
        }
        Ok(out)
    }

    pub fn read_name(&self, index: u32) -> Result<String, DataplaneError> {
        let n = self.names.get(&index, 0).map_err(map_err(maps::NAMES))?;
        Ok(n.as_str().to_string())
    }

    pub fn write_name(&mut self, index: u32, name: &str) -> Result<(), DataplaneError> {
        let n = Name::new(name).ok_or_else(|| DataplaneError::NameTooLong {
            name: name.to_string(),
            max: lb_common::NAME_MAX,
        })?;
        self.names.set(index, n, 0).map_err(map_err(maps::NAMES))
    }

    /// Publishes `ring` (backend slots, `ring_size` long, or [`NO_BACKEND`])
    /// for the VIP `vip` (a bare `SocketAddrV4` is a TCP VIP; see
    /// [`Endpoint::udp`]) with `flags` (`VIP_F_*`) and its protocol's
    /// default `flow_idle_ms` (TCP 0, UDP 30 s; see
    /// [`Dataplane::publish_vip_idle`]).
    pub fn publish_vip(
        &mut self,
        vip: impl Into<Endpoint>,
        vip_index: u32,
        ring: &[u32],
        flags: u32,
    ) -> Result<(), DataplaneError> {
        let vip = vip.into();
        let idle = vip.protocol.default_flow_idle_ms();
        self.publish_vip_idle(vip, vip_index, ring, flags, idle)
    }

    /// [`Dataplane::publish_vip`] with the VIP's `flow_idle_ms`: the ring is
    /// written into the idle slot as references carrying each slot's
    /// generation, then made live with one atomic `VIPS`/`VIPS6` update.
    pub fn publish_vip_idle(
        &mut self,
        vip: impl Into<Endpoint>,
        vip_index: u32,
        ring: &[u32],
        flags: u32,
        flow_idle_ms: u32,
    ) -> Result<(), DataplaneError> {
        let key = key_of(vip.into());
        let ring_size = self.shape.ring_size;
        if ring.len() != ring_size as usize {
            return Err(DataplaneError::RingLength {
                vip_index,
                len: ring.len(),
                ring_size,
            });
        }
        let ring: Vec<u32> = ring
            .iter()
            .map(|&slot| match self.generations.get(slot as usize) {
                Some(&g) if slot != NO_BACKEND => backend_ref(slot, g),
                _ => NO_BACKEND,
            })
            .collect();
        let ring = ring.as_slice();
        let live = match &key {
            Key::V4(k) => self.vips.get(k, 0).ok(),
            Key::V6(k) => self.vips6.get(k, 0).ok(),
        };
        if let Some(live) = live {
            if live.index == vip_index
                && live.flags == flags
                && live.flow_idle_ms == flow_idle_ms
                && self
                    .written
                    .get(&(vip_index, live.ring_slot))
                    .map(Vec::as_slice)
                    == Some(ring)
            {
                return Ok(());
            }
        }
        let slot = match live {
            Some(m) if m.index == vip_index => (m.ring_slot + 1) % RING_SLOTS,
            _ => 0,
        };
        let base = (vip_index * RING_SLOTS + slot) * ring_size;
        let previous = self.written.remove(&(vip_index, slot));
        for (i, &backend) in ring.iter().enumerate() {
            if previous.as_ref().is_some_and(|p| p[i] == backend) {
                continue;
            }
            self.rings
                .set(base + i as u32, backend, 0)
                .map_err(map_err(maps::RINGS))?;
        }
        self.written.insert((vip_index, slot), ring.to_vec());
        let meta = VipMeta {
            index: vip_index,
            ring_slot: slot,
            flags,
            flow_idle_ms,
        };
        // The filter bit first: a VIP the filter hides is a VIP whose
        // packets pass to the kernel.
        self.filter(FilterSide::Vips, key, true)?;
        match key {
            Key::V4(k) => self.vips.insert(k, meta, 0).map_err(map_err(maps::VIPS))?,
            Key::V6(k) => self
                .vips6
                .insert(k, meta, 0)
                .map_err(map_err(maps::VIPS6))?,
        }
        let serving = ring.iter().any(|&r| r != NO_BACKEND);
        self.note_vip(&key, Some(serving))
    }

    /// Records that the pool at `key` exists and whether it can serve
    /// (`None`: it is gone), and writes its address's `VIP_ADDRS` or
    /// `VIP_ADDRS6` entry to match: removed with its last pool.
    fn note_vip(&mut self, key: &Key, serving: Option<bool>) -> Result<(), DataplaneError> {
        let addr = key_addr(key);
        let pool = match key {
            Key::V4(k) => (k.port, k.proto),
            Key::V6(k) => (k.port, k.proto),
        };
        let pools = self.vip_pools.entry(addr).or_default();
        match serving {
            Some(s) => {
                pools.insert(pool, s);
            }
            None => {
                pools.remove(&pool);
            }
        }
        let entry = VipAddr {
            pools: pools.len() as u32,
            serving: pools.values().filter(|&&s| s).count() as u32,
        };
        if pools.is_empty() {
            self.vip_pools.remove(&addr);
        }
        self.write_vip_addr(addr, entry)
    }

    /// Writes `VIP_ADDRS`/`VIP_ADDRS6` for `addr` (removes it at no pools).
    fn write_vip_addr(&mut self, addr: IpAddr, entry: VipAddr) -> Result<(), DataplaneError> {
        match addr {
            IpAddr::V4(a) => {
                let k = u32::from_ne_bytes(a.octets());
                if entry.pools == 0 {
                    ignore_absent(self.vip_addrs.remove(&k), maps::VIP_ADDRS)
                } else {
                    self.vip_addrs
                        .insert(k, entry, 0)
                        .map_err(map_err(maps::VIP_ADDRS))
                }
            }
            IpAddr::V6(a) => {
                let k = addr6(a);
                if entry.pools == 0 {
                    ignore_absent(self.vip_addrs6.remove(&k), maps::VIP_ADDRS6)
                } else {
                    self.vip_addrs6
                        .insert(k, entry, 0)
                        .map_err(map_err(maps::VIP_ADDRS6))
                }
            }
        }
    }

    /// On load: `vip_pools` from the VIPs in the maps, and `VIP_ADDRS` /
    /// `VIP_ADDRS6` made to hold exactly their addresses. Whether an
    /// adopted pool can serve is not in the maps short of reading its
    /// ring: it is taken from its address's adopted entry until the
    /// controller publishes the pool again (which it does as it starts).
    pub(super) fn rebuild_vip_addrs(&mut self) -> Result<(), DataplaneError> {
        let mut adopted = std::collections::HashMap::new();
        for item in self.vip_addrs.iter() {
            let (k, v) = item.map_err(map_err(maps::VIP_ADDRS))?;
            adopted.insert(IpAddr::V4(k.to_ne_bytes().into()), v);
        }
        for item in self.vip_addrs6.iter() {
            let (k, v) = item.map_err(map_err(maps::VIP_ADDRS6))?;
            adopted.insert(IpAddr::V6(k.octets().into()), v);
        }
        let keys: Vec<Key> = self
            .vips
            .keys()
            .map(|k| k.map(Key::V4).map_err(map_err(maps::VIPS)))
            .chain(
                self.vips6
                    .keys()
                    .map(|k| k.map(Key::V6).map_err(map_err(maps::VIPS6))),
            )
            .collect::<Result<_, _>>()?;
        self.vip_pools.clear();
        for key in &keys {
            let serving = adopted
                .get(&key_addr(key))
                .is_some_and(|a: &VipAddr| a.serving > 0);
            self.note_vip(key, Some(serving))?;
        }
        for (addr, _) in adopted {
            if !self.vip_pools.contains_key(&addr) {
                self.write_vip_addr(addr, VipAddr::default())?;
            }
        }
        Ok(())
    }

    /// Stops balancing a VIP. Its packets are then those of a VIP
    /// address without a pool while the address has other pools, and
    /// pass to the kernel once it has none.
    pub fn remove_vip(&mut self, vip: impl Into<Endpoint>) -> Result<(), DataplaneError> {
        let key = key_of(vip.into());
        let (r, map) = match key {
            Key::V4(k) => (self.vips.remove(&k), maps::VIPS),
            Key::V6(k) => (self.vips6.remove(&k), maps::VIPS6),
        };
        if self.removed(r, map, FilterSide::Vips, key)? {
            self.note_vip(&key, None)?;
        }
        Ok(())
    }

    /// After the entry of `key` was removed from `map` (`r`): an entry
    /// already absent is no error (`false`: nothing was removed); the key
    /// leaves `side` of the address filter.
    fn removed(
        &mut self,
        r: Result<(), MapError>,
        map: &'static str,
        side: FilterSide,
        key: Key,
    ) -> Result<bool, DataplaneError> {
        match r {
            Ok(()) => {}
            Err(e) if absent(&e) => return Ok(false),
            Err(e) => return Err(map_err(map)(e)),
        }
        self.filter(side, key, false)?;
        Ok(true)
    }

    /// Records `key` (before its entry is written) or forgets it (after
    /// its entry is removed), and brings its word of `ADDR_FILTER` up to
    /// date.
    fn filter(&mut self, side: FilterSide, key: Key, present: bool) -> Result<(), DataplaneError> {
        let keys = &mut self.filtered[side as usize];
        if present {
            keys.insert(key);
        } else {
            keys.remove(&key);
        }
        let (at, _) = filter_bit(side, &key);
        self.sync_filter_word(side, at)
    }

    /// Recomputes word `at` of `ADDR_FILTER` from `side`'s keys and writes
    /// it if it changed.
    fn sync_filter_word(&mut self, side: FilterSide, at: u32) -> Result<(), DataplaneError> {
        let want = self.filtered[side as usize]
            .iter()
            .map(|k| filter_bit(side, k))
            .filter(|&(w, _)| w == at)
            .fold(0, |acc, (_, bit)| acc | bit);
        if self.filter_words[at as usize] != want {
            self.addr_filter
                .set(at, want, 0)
                .map_err(map_err(maps::ADDR_FILTER))?;
            self.filter_words[at as usize] = want;
        }
        Ok(())
    }

    /// Takes the keys from `VIPS`, `REPLIES` and their IPv6 twins and
    /// writes every word of `ADDR_FILTER` (on load: a predecessor's pinned
    /// maps must all be covered, and nothing else).
    pub(super) fn rebuild_addr_filter(&mut self) -> Result<(), DataplaneError> {
        let mut vips = std::collections::HashSet::new();
        for k in self.vips.keys() {
            vips.insert(Key::V4(k.map_err(map_err(maps::VIPS))?));
        }
        for k in self.vips6.keys() {
            vips.insert(Key::V6(k.map_err(map_err(maps::VIPS6))?));
        }
        let mut replies = std::collections::HashSet::new();
        for k in self.replies.keys() {
            replies.insert(Key::V4(k.map_err(map_err(maps::REPLIES))?));
        }
        for k in self.replies6.keys() {
            replies.insert(Key::V6(k.map_err(map_err(maps::REPLIES6))?));
        }
        self.filtered = [vips, replies];
        let mut words = vec![0u64; ADDR_FILTER_LEN as usize];
        for side in [FilterSide::Vips, FilterSide::Backends] {
            for key in &self.filtered[side as usize] {
                let (at, bit) = filter_bit(side, key);
                words[at as usize] |= bit;
            }
        }
        for (at, &word) in words.iter().enumerate() {
            self.addr_filter
                .set(at as u32, word, 0)
                .map_err(map_err(maps::ADDR_FILTER))?;
        }
        self.filter_words = words;
        Ok(())
    }

    /// Writes `REPLY_ADDRS`/`REPLY_ADDRS6` for `addr`: how many reply
    /// endpoints it has (removed at none).
    fn sync_reply_addr(&mut self, addr: IpAddr) -> Result<(), DataplaneError> {
        let n = self.filtered[FilterSide::Backends as usize]
            .iter()
            .filter(|k| key_addr(k) == addr)
            .count() as u32;
        match addr {
            IpAddr::V4(a) => {
                let k = u32::from_ne_bytes(a.octets());
                if n == 0 {
                    ignore_absent(self.reply_addrs.remove(&k), maps::REPLY_ADDRS)
                } else {
                    self.reply_addrs
                        .insert(k, n, 0)
                        .map_err(map_err(maps::REPLY_ADDRS))
                }
            }
            IpAddr::V6(a) => {
                let k = addr6(a);
                if n == 0 {
                    ignore_absent(self.reply_addrs6.remove(&k), maps::REPLY_ADDRS6)
                } else {
                    self.reply_addrs6
                        .insert(k, n, 0)
                        .map_err(map_err(maps::REPLY_ADDRS6))
                }
            }
        }
    }

    /// On load: `REPLY_ADDRS`/`REPLY_ADDRS6` made to hold exactly the
    /// addresses of `REPLIES`/`REPLIES6` (after `rebuild_addr_filter`).
    pub(super) fn rebuild_reply_addrs(&mut self) -> Result<(), DataplaneError> {
        let mut addrs: std::collections::HashSet<IpAddr> = std::collections::HashSet::new();
        for k in self.reply_addrs.keys() {
            let k = k.map_err(map_err(maps::REPLY_ADDRS))?;
            addrs.insert(IpAddr::V4(k.to_ne_bytes().into()));
        }
        for k in self.reply_addrs6.keys() {
            let k = k.map_err(map_err(maps::REPLY_ADDRS6))?;
            addrs.insert(IpAddr::V6(k.octets().into()));
        }
        addrs.extend(
            self.filtered[FilterSide::Backends as usize]
                .iter()
                .map(key_addr),
        );
        for addr in addrs {
            self.sync_reply_addr(addr)?;
        }
        Ok(())
    }

    /// Writes a slot's state. A slot that was free gets a new generation
    /// first: references written for its previous occupant (ring entries,
    /// flows) stop matching it. An IPv6 slot's address goes into
    /// `BACKEND_ADDRS6` before its state, so no packet finds the slot
    /// active without its address.
    pub fn write_backend(&mut self, b: &BackendSlot) -> Result<(), DataplaneError> {
        let current = self
            .backends
            .get(&b.slot, 0)
            .map_err(map_err(maps::BACKENDS))?;
        let generation = if current.state == lb_common::BACKEND_FREE {
            (current.generation + 1) % GENERATIONS
        } else {
            current.generation
        };
        let addr = match b.addr {
            SocketAddr::V4(a) => u32::from_ne_bytes(a.ip().octets()),
            SocketAddr::V6(a) => {
                self.backend_addrs6
                    .set(b.slot, addr6(*a.ip()), 0)
                    .map_err(map_err(maps::BACKEND_ADDRS6))?;
                0
            }
        };
        let meta = BackendMeta {
            addr,
            port: b.addr.port().to_be(),
            state: b.state,
            flags: b.flags,
            vip_index: b.vip_index,
            generation,
        };
        self.backends
            .set(b.slot, meta, 0)
            .map_err(map_err(maps::BACKENDS))?;
        if let Some(g) = self.generations.get_mut(b.slot as usize) {
            *g = generation;
        }
        Ok(())
    }

    /// Releases a slot. Its flows were re-steered already (it was down or
    /// drained); a stale flow entry naming it re-selects on its next packet.
    /// The generation stays, so the next occupant's is new.
    pub fn free_backend(&mut self, slot: u32) -> Result<(), DataplaneError> {
        let generation = self.generations.get(slot as usize).copied().unwrap_or(0);
        let meta = BackendMeta {
            generation,
            ..BackendMeta::default()
        };
        self.backends
            .set(slot, meta, 0)
            .map_err(map_err(maps::BACKENDS))
    }

    /// Replies from `backend` (its address, port and protocol; a bare
    /// `SocketAddrV4` is TCP) are rewritten to come from `vip`, of the same
    /// family.
    pub fn write_reply(
        &mut self,
        backend: impl Into<Endpoint>,
        vip: impl Into<SocketAddr>,
        slot: u32,
        vip_index: u32,
    ) -> Result<(), DataplaneError> {
        let backend = backend.into();
        let vip = vip.into();
        let key = key_of(backend);
        match (key, vip) {
            (Key::V4(k), SocketAddr::V4(v)) => {
                let entry = ReplyEntry {
                    vip_addr: u32::from_ne_bytes(v.ip().octets()),
                    vip_port: v.port().to_be(),
                    flags: 0,
                    backend: slot,
                    vip_index,
                };
                self.filter(FilterSide::Backends, key, true)?;
                self.sync_reply_addr(key_addr(&key))?;
                self.replies
                    .insert(k, entry, 0)
                    .map_err(map_err(maps::REPLIES))
            }
            (Key::V6(k), SocketAddr::V6(v)) => {
                let entry = ReplyEntry6 {
                    vip_addr: addr6(*v.ip()),
                    vip_port: v.port().to_be(),
                    flags: 0,
                    backend: slot,
                    vip_index,
                };
                self.filter(FilterSide::Backends, key, true)?;
                self.sync_reply_addr(key_addr(&key))?;
                self.replies6
                    .insert(k, entry, 0)
                    .map_err(map_err(maps::REPLIES6))
            }
            _ => Err(DataplaneError::FamilyMismatch {
                backend: backend.addr,
                vip,
            }),
        }
    }

    pub fn remove_reply(&mut self, backend: impl Into<Endpoint>) -> Result<(), DataplaneError> {
        let key = key_of(backend.into());
        let (r, map) = match key {
            Key::V4(k) => (self.replies.remove(&k), maps::REPLIES),
            Key::V6(k) => (self.replies6.remove(&k), maps::REPLIES6),
        };
        if self.removed(r, map, FilterSide::Backends, key)? {
            self.sync_reply_addr(key_addr(&key))?;
        }
        Ok(())
    }

    /// Entry `i` of ring `slot` of a VIP, as the data plane sees it: the
    /// backend slot it names, or [`NO_BACKEND`].
    pub fn ring_entry(&self, vip_index: u32, slot: u32, i: u32) -> Result<u32, DataplaneError> {
        let idx = (vip_index * RING_SLOTS + slot) * self.shape.ring_size + i;
        let r = self.rings.get(&idx, 0).map_err(map_err(maps::RINGS))?;
        Ok(if r == NO_BACKEND { r } else { ref_slot(r) })
    }
}

/// Whether a map error says the key was not there. aya 0.14 reports a
/// delete of a missing hash key as the syscall's ENOENT, not as
/// `KeyNotFound`: a removal that finds nothing has nothing to do.
fn absent(e: &MapError) -> bool {
    match e {
        MapError::KeyNotFound => true,
        MapError::SyscallError(s) => s.io_error.raw_os_error() == Some(libc::ENOENT),
        _ => false,
    }
}

/// A removal's result, a key already absent being no error.
fn ignore_absent(r: Result<(), MapError>, map: &'static str) -> Result<(), DataplaneError> {
    match r {
        Err(e) if !absent(&e) => Err(map_err(map)(e)),
        _ => Ok(()),
    }
}

/// The VIPs in `VIPS` and `VIPS6` (both families), with their meta. An
/// entry of a protocol xdplb never writes is skipped.
pub(super) fn read_vips(
    vips: &aya::maps::HashMap<aya::maps::MapData, lb_common::L4Addr, VipMeta>,
    vips6: &aya::maps::HashMap<aya::maps::MapData, lb_common::L4Addr6, VipMeta>,
) -> Result<Vec<(Endpoint, VipMeta)>, DataplaneError> {
    let mut out = Vec::new();
    for item in vips.iter() {
        let (k, meta) = item.map_err(map_err(maps::VIPS))?;
        out.extend(endpoint4(&k).map(|e| (e, meta)));
    }
    for item in vips6.iter() {
        let (k, meta) = item.map_err(map_err(maps::VIPS6))?;
        out.extend(endpoint6(&k).map(|e| (e, meta)));
    }
    Ok(out)
}
