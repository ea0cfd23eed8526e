//! The data plane as the controller means it to be: a complete, typed and
//! comparable image of what it writes (each VIP's entry and ring inputs,
//! backend slots, reply entries, names) and of what it announces.
//!
//! The controller computes a target image from config and observations
//! (`reconcile`, pure), [`diff`]s it against the live image (what the maps
//! hold: adopted from the pins at start, then kept as writes succeed) and
//! applies the changes in the order the program must see them (`apply`).
//! `xdplb plan` is the same diff, shown instead of applied.
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;

use lb_common::BACKEND_DOWN;

use crate::{announce::Wanted, config::Endpoint, dataplane::BackendSlot};

/// One backend in a VIP's ring: Maglev's input (slot, key, weight).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RingMember {
    pub slot: u32,
    pub name: String,
    pub weight: u32,
}

/// A VIP's entry in `VIPS`/`VIPS6` and the ring it points at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VipImage {
    pub pool: String,
    pub endpoint: Endpoint,
    /// `VIP_F_*` bits.
    pub flags: u32,
    pub flow_idle_ms: u32,
    /// The active backends the ring is built from, in config order. `None`
    /// when not known: a ring adopted from the pins holds its entries but
    /// not the weights they were built with, so it is published again.
    pub ring: Option<Vec<RingMember>>,
}

impl VipImage {
    /// Whether the ring has a backend for new flows (known and not empty).
    pub fn serves(&self) -> bool {
        self.ring.as_ref().is_some_and(|r| !r.is_empty())
    }
}

/// A `REPLIES`/`REPLIES6` entry: replies from a backend come from `vip`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReplyImage {
    pub vip: SocketAddr,
    pub slot: u32,
    pub vip_index: u32,
}

/// Everything the controller writes, keyed as the maps are.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Image {
    /// By VIP index.
    pub vips: BTreeMap<u32, VipImage>,
    /// By backend slot; a slot not here is free.
    pub slots: BTreeMap<u32, BackendSlot>,
    /// By the backend endpoint replies come from.
    pub replies: BTreeMap<Endpoint, ReplyImage>,
    /// `NAMES` entries of the VIP indices and slots in use (a name left
    /// behind by a freed index is harmless and never cleared).
    pub names: BTreeMap<u32, String>,
    /// `[announce]`: pool → VIP address announced; `None` without
    /// `[announce]`.
    pub announced: Option<Wanted>,
}

/// One write that turns an image into another.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    Name {
        index: u32,
        name: String,
    },
    /// Writes a slot's entry (a free slot gets a new generation first).
    Backend(BackendSlot),
    /// Frees a slot: before it is handed to another backend, or once
    /// nothing needs it.
    Free(u32),
    Reply {
        backend: Endpoint,
        reply: ReplyImage,
    },
    RemoveReply(Endpoint),
    /// Writes the VIP's ring into its idle half and flips its entry to it.
    Publish {
        index: u32,
        vip: VipImage,
    },
    RemoveVip(Endpoint),
    /// Hands `[announce]` its new set.
    Announce(Option<Wanted>),
}

/// Whether a slot holds another backend than `live` says: it must be freed
/// (a new generation) before it is written, or flows pinned to the old
/// occupant would reach the new one.
fn reoccupied(live: &BackendSlot, target: &BackendSlot) -> bool {
    live.addr != target.addr || live.vip_index != target.vip_index
}

/// The writes that turn `live` into `target`, in the order no packet may
/// see otherwise:
/// 1. names (the program does not read them; counters are labelled);
/// 2. slots that are not down get their new state (a backend is marked
///    before any ring names it), then reply entries;
/// 3. rings, each flipped atomically;
/// 4. slots that are down (a backend leaves the rings before its flows are
///    re-steered, which consults the new ring);
/// 5. what nothing needs any more: VIP entries, reply entries, slots;
/// 6. the announcement.
///
/// A slot handed to another backend is freed just before its first write.
/// Pure.
pub fn diff(live: &Image, target: &Image) -> Vec<Change> {
    let mut out = Vec::new();
    for (&index, name) in &target.names {
        if live.names.get(&index) != Some(name) {
            out.push(Change::Name {
                index,
                name: name.clone(),
            });
        }
    }
    let slot_writes = |down: bool, out: &mut Vec<Change>| {
        for (slot, meta) in &target.slots {
            if (meta.state == BACKEND_DOWN) != down {
                continue;
            }
            match live.slots.get(slot) {
                Some(l) if l == meta => continue,
                Some(l) if reoccupied(l, meta) => out.push(Change::Free(*slot)),
                _ => {}
            }
            out.push(Change::Backend(meta.clone()));
        }
    };
    slot_writes(false, &mut out);
    for (backend, reply) in &target.replies {
        if live.replies.get(backend) != Some(reply) {
            out.push(Change::Reply {
                backend: *backend,
                reply: *reply,
            });
        }
    }
    for (&index, vip) in &target.vips {
        if live.vips.get(&index) != Some(vip) {
            out.push(Change::Publish {
                index,
                vip: vip.clone(),
            });
        }
    }
    slot_writes(true, &mut out);
    let wanted_vips: BTreeSet<Endpoint> = target.vips.values().map(|v| v.endpoint).collect();
    let gone_vips: BTreeSet<Endpoint> = live
        .vips
        .values()
        .map(|v| v.endpoint)
        .filter(|e| !wanted_vips.contains(e))
        .collect();
    out.extend(gone_vips.into_iter().map(Change::RemoveVip));
    for backend in live.replies.keys() {
        if !target.replies.contains_key(backend) {
            out.push(Change::RemoveReply(*backend));
        }
    }
    for slot in live.slots.keys() {
        if !target.slots.contains_key(slot) {
            out.push(Change::Free(*slot));
        }
    }
    if live.announced != target.announced {
        out.push(Change::Announce(target.announced.clone()));
    }
    out
}

impl Image {
    /// Notes a write that succeeded.
    pub fn record(&mut self, change: &Change) {
        match change {
            Change::Name { index, name } => {
                self.names.insert(*index, name.clone());
            }
            Change::Backend(meta) => {
                self.slots.insert(meta.slot, meta.clone());
            }
            Change::Free(slot) => {
                self.slots.remove(slot);
            }
            Change::Reply { backend, reply } => {
                self.replies.insert(*backend, *reply);
            }
            Change::RemoveReply(backend) => {
                self.replies.remove(backend);
            }
            Change::Publish { index, vip } => {
                // The entry is keyed by endpoint: another index holding
                // the same endpoint lost it to this one.
                self.vips
                    .retain(|i, v| *i == *index || v.endpoint != vip.endpoint);
                self.vips.insert(*index, vip.clone());
            }
            Change::RemoveVip(endpoint) => {
                self.vips.retain(|_, v| v.endpoint != *endpoint);
            }
            Change::Announce(wanted) => self.announced = wanted.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lb_common::{BACKEND_ACTIVE, BACKEND_DRAINING};

    fn slot(slot: u32, addr: &str, state: u8) -> BackendSlot {
        BackendSlot {
            slot,
            vip_index: 0,
            addr: addr.parse().unwrap(),
            state,
            flags: 0,
        }
    }

    fn vip(members: &[u32]) -> VipImage {
        VipImage {
            pool: "web".into(),
            endpoint: Endpoint::tcp("198.18.2.10:80".parse::<SocketAddr>().unwrap()),
            flags: 0,
            flow_idle_ms: 0,
            ring: Some(
                members
                    .iter()
                    .map(|&s| RingMember {
                        slot: s,
                        name: format!("b{s}"),
                        weight: 1000,
                    })
                    .collect(),
            ),
        }
    }

    /// A backend coming up is written before the ring names it; one going
    /// down after the ring no longer does; a slot handed to another
    /// backend is freed first; what is gone goes last.
    #[test]
    fn the_diff_keeps_the_data_planes_order() {
        let live = Image {
            vips: [(0, vip(&[1, 2]))].into(),
            slots: [
                (1, slot(1, "198.18.1.11:80", BACKEND_ACTIVE)),
                (2, slot(2, "198.18.1.12:80", BACKEND_ACTIVE)),
                (3, slot(3, "198.18.1.13:80", BACKEND_DRAINING)),
                (4, slot(4, "198.18.1.14:80", BACKEND_DRAINING)),
            ]
            .into(),
            ..Image::default()
        };
        let target = Image {
            vips: [(0, vip(&[1, 3]))].into(),
            slots: [
                (1, slot(1, "198.18.1.11:80", BACKEND_ACTIVE)),
                (2, slot(2, "198.18.1.12:80", BACKEND_DOWN)),
                (3, slot(3, "198.18.1.13:80", BACKEND_ACTIVE)),
                (4, slot(4, "198.18.1.24:80", BACKEND_DOWN)),
            ]
            .into(),
            ..Image::default()
        };
        let changes = diff(&live, &target);
        assert_eq!(
            changes,
            vec![
                Change::Backend(target.slots[&3].clone()),
                Change::Publish {
                    index: 0,
                    vip: target.vips[&0].clone()
                },
                Change::Backend(target.slots[&2].clone()),
                Change::Free(4),
                Change::Backend(target.slots[&4].clone()),
            ]
        );
        let mut applied = live.clone();
        for c in &changes {
            applied.record(c);
        }
        assert_eq!(applied, target);
        assert!(diff(&target, &target).is_empty());
        // Everything gone: the VIP entry, then the slots.
        let changes = diff(&target, &Image::default());
        assert_eq!(changes[0], Change::RemoveVip(target.vips[&0].endpoint));
        assert_eq!(changes[1..], [1, 2, 3, 4].map(Change::Free));
    }
}
