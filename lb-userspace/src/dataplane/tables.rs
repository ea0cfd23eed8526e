//! Reading and writing the balancing maps: VIPs and their rings, backend
//! slots, replies, names, and the address filter kept in step with them.
use std::net::{Ipv6Addr, SocketAddr, SocketAddrV6};

use aya::maps::MapError;
use lb_common::{
    backend_ref, limits::MAX_BACKENDS, maps, ref_slot, BackendMeta, L4Addr, Name, ReplyEntry,
    ReplyEntry6, VipMeta, GENERATIONS, NO_BACKEND, RING_SLOTS,
};

use super::{
    addr6, backend_addr, endpoint4, endpoint6, key_of, map_err, socket_addr, BackendSlot,
    Dataplane, DataplaneError, Endpoint, Key,
};

/// A half of `ADDR_FILTER`: the addresses of `VIPS` (packets to them) or
/// of `REPLIES` (packets from them).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum FilterSide {
    Vips = 0,
    Backends = 1,
}

impl FilterSide {
    /// Its first word in `ADDR_FILTER`.
    fn base(self) -> u32 {
        match self {
            FilterSide::Vips => 0,
            FilterSide::Backends => lb_common::ADDR_FILTER_BACKENDS,
        }
    }
}

impl Dataplane {
    /// The VIPs currently in the maps (both families), with their meta.
    /// An entry of a protocol xdplb never writes is skipped.
    pub fn read_vips(&self) -> Result<Vec<(Endpoint, VipMeta)>, DataplaneError> {
        let mut out = Vec::new();
        for item in self.vips.iter() {
            let (k, meta) = item.map_err(map_err(maps::VIPS))?;
            out.extend(endpoint4(&k).map(|e| (e, meta)));
        }
        for item in self.vips6.iter() {
            let (k, meta) = item.map_err(map_err(maps::VIPS6))?;
            out.extend(endpoint6(&k).map(|e| (e, meta)));
        }
        Ok(out)
    }

    /// The reply entries in the maps (both families): (backend endpoint,
    /// VIP address, backend slot, VIP index). An entry of a protocol xdplb
    /// never writes is skipped.
    pub fn read_replies(&self) -> Result<Vec<(Endpoint, SocketAddr, u32, u32)>, DataplaneError> {
        let mut out = Vec::new();
        for item in self.replies.iter() {
            let (k, r) = item.map_err(map_err(maps::REPLIES))?;
            let vip = SocketAddr::V4(socket_addr(&L4Addr {
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
        match key {
            Key::V4(k) => {
                // The filter bit first: a VIP the filter hides is a VIP
                // whose packets pass to the kernel.
                self.filter(FilterSide::Vips, k, true)?;
                self.vips.insert(k, meta, 0).map_err(map_err(maps::VIPS))
            }
            Key::V6(k) => self.vips6.insert(k, meta, 0).map_err(map_err(maps::VIPS6)),
        }
    }

    /// Stops balancing a VIP: its packets pass to the kernel from now on.
    pub fn remove_vip(&mut self, vip: impl Into<Endpoint>) -> Result<(), DataplaneError> {
        let (r, map, v4) = match key_of(vip.into()) {
            Key::V4(k) => (self.vips.remove(&k), maps::VIPS, Some(k)),
            Key::V6(k) => (self.vips6.remove(&k), maps::VIPS6, None),
        };
        self.removed(r, map, FilterSide::Vips, v4)
    }

    /// After an entry of `map` was removed (`r`): an entry already absent is
    /// no error; an IPv4 key (`v4`) leaves `side` of the address filter.
    fn removed(
        &mut self,
        r: Result<(), MapError>,
        map: &'static str,
        side: FilterSide,
        v4: Option<L4Addr>,
    ) -> Result<(), DataplaneError> {
        match r {
            Ok(()) => {}
            Err(e) if absent(&e) => return Ok(()),
            Err(e) => return Err(map_err(map)(e)),
        }
        match v4 {
            Some(k) => self.filter(side, k, false),
            None => Ok(()),
        }
    }

    /// Records `key` (before its entry is written) or forgets it (after
    /// its entry is removed), and brings its word of `ADDR_FILTER` up to
    /// date.
    fn filter(
        &mut self,
        side: FilterSide,
        key: L4Addr,
        present: bool,
    ) -> Result<(), DataplaneError> {
        let keys = &mut self.filtered[side as usize];
        if present {
            keys.insert(key);
        } else {
            keys.remove(&key);
        }
        let (word, _) = lb_common::addr_filter_word(key.addr);
        self.sync_filter_word(side, word)
    }

    /// Recomputes word `word` of `side` from the keys and writes it if it
    /// changed.
    fn sync_filter_word(&mut self, side: FilterSide, word: u32) -> Result<(), DataplaneError> {
        let want = self.filtered[side as usize]
            .iter()
            .map(|k| lb_common::addr_filter_word(k.addr))
            .filter(|&(w, _)| w == word)
            .fold(0, |acc, (_, bit)| acc | bit);
        let at = side.base() + word;
        if self.filter_words[at as usize] != want {
            self.addr_filter
                .set(at, want, 0)
                .map_err(map_err(maps::ADDR_FILTER))?;
            self.filter_words[at as usize] = want;
        }
        Ok(())
    }

    /// Takes the keys from `VIPS` and `REPLIES` and writes every word of
    /// `ADDR_FILTER` (on load: a predecessor's pinned maps must all be
    /// covered, and nothing else).
    pub(super) fn rebuild_addr_filter(&mut self) -> Result<(), DataplaneError> {
        let vips = self
            .vips
            .keys()
            .collect::<Result<_, _>>()
            .map_err(map_err(maps::VIPS))?;
        let replies = self
            .replies
            .keys()
            .collect::<Result<_, _>>()
            .map_err(map_err(maps::REPLIES))?;
        self.filtered = [vips, replies];
        let mut words = vec![0u64; 2 * lb_common::ADDR_FILTER_WORDS as usize];
        for side in [FilterSide::Vips, FilterSide::Backends] {
            for key in &self.filtered[side as usize] {
                let (word, bit) = lb_common::addr_filter_word(key.addr);
                words[(side.base() + word) as usize] |= bit;
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
        match (key_of(backend), vip) {
            (Key::V4(k), SocketAddr::V4(v)) => {
                let entry = ReplyEntry {
                    vip_addr: u32::from_ne_bytes(v.ip().octets()),
                    vip_port: v.port().to_be(),
                    _pad: 0,
                    backend: slot,
                    vip_index,
                };
                self.filter(FilterSide::Backends, k, true)?;
                self.replies
                    .insert(k, entry, 0)
                    .map_err(map_err(maps::REPLIES))
            }
            (Key::V6(k), SocketAddr::V6(v)) => {
                let entry = ReplyEntry6 {
                    vip_addr: addr6(*v.ip()),
                    vip_port: v.port().to_be(),
                    _pad: 0,
                    backend: slot,
                    vip_index,
                };
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
        let (r, map, v4) = match key_of(backend.into()) {
            Key::V4(k) => (self.replies.remove(&k), maps::REPLIES, Some(k)),
            Key::V6(k) => (self.replies6.remove(&k), maps::REPLIES6, None),
        };
        self.removed(r, map, FilterSide::Backends, v4)
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
