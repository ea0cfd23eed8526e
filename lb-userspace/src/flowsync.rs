//! Flow sync (`[sync]`): what one gateway tells the others about flows
//! they could not recompute, and what a gateway accepts from them.
//!
//! Not to be confused with `controller::sync`, which makes the maps hold
//! the controller's image. The design (docs/PAIR.md, "Flow sync"):
//!
//! - The flow table keeps a keyed tag per flow, not the 5-tuple. With
//!   `[sync]`, every gateway keys its tags with [`tag_seed`] of the shared
//!   secret, so a tag one gateway sends is the tag the other's program
//!   computes for the same packet.
//! - A message names a flow's backend the way every gateway names it: the
//!   VIP endpoint and the backend's address (slot references differ per
//!   gateway). The receiver maps it to its own reference
//!   ([`LocalBackends`]); a backend it does not have, or has down, is
//!   ignored: the flow then goes by the ring, as without sync.
//! - Every message is authenticated with HMAC-SHA256 under a key derived
//!   from the secret, bounded in size ([`MAX_MESSAGE`]), carries the
//!   sender's incarnation and a sequence number ([`ReplayWindow`]), and
//!   its send time (older than [`MAX_AGE_MS`]: dropped).
//! - Sending is bounded in rate ([`RateBound`]).
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// First bytes of every message: "xdplb flow sync", version 1.
pub const MAGIC: [u8; 4] = *b"XFS1";
/// Largest message sent or accepted (bytes, HMAC included): one datagram
/// that crosses any path unfragmented (IPv6's minimum MTU less headers).
pub const MAX_MESSAGE: usize = 1200;
/// Bytes of the HMAC-SHA256 tag closing a message.
pub const MAC_LEN: usize = 32;
/// Header: magic, sender incarnation (u64), sequence (u64), send time
/// (unix ms, u64), entry count (u16).
pub const HEADER_LEN: usize = 4 + 8 + 8 + 8 + 2;
/// A message sent longer ago than this (by its own clock stamp) is
/// dropped: gateways' clocks are NTP-close, and a pin older than this
/// would have been sent again by the periodic refresh anyway.
pub const MAX_AGE_MS: u64 = 30_000;

/// Labels for the two keys derived from the secret: one authenticates,
/// the other keys the flow table's tags. Distinct, so the tag key (which
/// the data plane holds in a readable global) never reveals the MAC key.
const MAC_LABEL: &[u8] = b"xdplb flow sync: message key v1";
const SEED_LABEL: &[u8] = b"xdplb flow sync: flow tag seed v1";

fn derive(secret: &str, label: &[u8]) -> [u8; 32] {
    // HKDF-extract-and-expand reduced to one block: HMAC(secret, label).
    let mut mac = HmacSha256::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
    mac.update(label);
    mac.finalize().into_bytes().into()
}

/// The flow table's tag key (`FLOW_SEED`) every gateway sharing `secret`
/// uses, so their tags agree. Never 0 (0 is "unset" nowhere, but a key of
/// 0 would be the compile-time default).
pub fn tag_seed(secret: &str) -> u64 {
    let k = derive(secret, SEED_LABEL);
    let seed = u64::from_le_bytes(k[..8].try_into().expect("8 bytes"));
    if seed == 0 {
        1
    } else {
        seed
    }
}

/// One flow a gateway tells its peers about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SyncEntry {
    /// The flow's tag (bits 8–63 of `FlowSlot::tag`, flags cleared).
    pub tag: u64,
    /// `FLOW_F_*` bits the entry carries over (UDP, acked, replied).
    pub flags: u8,
    /// `IPPROTO_TCP` or `IPPROTO_UDP`.
    pub proto: u8,
    pub vip: SocketAddr,
    pub backend: SocketAddr,
}

/// Flags worth carrying to a peer: what the flow is (UDP) and how far it
/// got (acked, replied: eviction keeps established flows longest).
pub const CARRIED_FLAGS: u8 =
    (lb_common::FLOW_F_UDP | lb_common::FLOW_F_ACKED | lb_common::FLOW_F_REPLIED) as u8;

/// Encoded size of an entry.
fn entry_len(e: &SyncEntry) -> usize {
    // tag, flags, proto, family, vip port, backend port, two addresses.
    8 + 1 + 1 + 1 + 2 + 2 + 2 * if e.vip.is_ipv4() { 4 } else { 16 }
}

/// A decoded, authenticated message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// Random per controller start: a restarted sender's sequence starts
    /// again without its messages looking like replays.
    pub incarnation: u64,
    pub seq: u64,
    pub sent_unix_ms: u64,
    pub entries: Vec<SyncEntry>,
}

/// Why a datagram was not accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Rejected {
    #[error("larger than {MAX_MESSAGE} bytes")]
    Oversize,
    #[error("too short or malformed")]
    Malformed,
    #[error("not a flow sync message (magic)")]
    Magic,
    #[error("HMAC does not verify (another secret, or altered)")]
    Unauthenticated,
    #[error("replayed or too old")]
    Replayed,
}

/// Keys derived from `[sync] secret`.
#[derive(Clone)]
pub struct SyncKeys {
    mac_key: [u8; 32],
}

impl SyncKeys {
    pub fn new(secret: &str) -> SyncKeys {
        SyncKeys {
            mac_key: derive(secret, MAC_LABEL),
        }
    }

    fn mac(&self) -> HmacSha256 {
        HmacSha256::new_from_slice(&self.mac_key).expect("HMAC takes any key length")
    }

    /// Encodes `entries` into as many messages as they need (each at most
    /// [`MAX_MESSAGE`] bytes), numbered from `*seq` on (advanced).
    pub fn encode(
        &self,
        incarnation: u64,
        seq: &mut u64,
        sent_unix_ms: u64,
        entries: &[SyncEntry],
    ) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let mut rest = entries;
        loop {
            let mut room = MAX_MESSAGE - HEADER_LEN - MAC_LEN;
            let n = rest
                .iter()
                .take_while(|e| {
                    let l = entry_len(e);
                    let fits = l <= room;
                    room = room.saturating_sub(l);
                    fits
                })
                .count();
            if n == 0 && !out.is_empty() {
                break;
            }
            let (batch, tail) = rest.split_at(n);
            let mut buf = Vec::with_capacity(MAX_MESSAGE);
            buf.extend_from_slice(&MAGIC);
            buf.extend_from_slice(&incarnation.to_be_bytes());
            buf.extend_from_slice(&seq.to_be_bytes());
            buf.extend_from_slice(&sent_unix_ms.to_be_bytes());
            buf.extend_from_slice(&(batch.len() as u16).to_be_bytes());
            for e in batch {
                put_entry(&mut buf, e);
            }
            let mut mac = self.mac();
            mac.update(&buf);
            buf.extend_from_slice(&mac.finalize().into_bytes());
            debug_assert!(buf.len() <= MAX_MESSAGE);
            out.push(buf);
            *seq += 1;
            rest = tail;
            if rest.is_empty() {
                break;
            }
        }
        out
    }

    /// Checks and decodes one datagram (the replay window is the
    /// caller's: [`ReplayWindow::accept`]).
    pub fn decode(&self, buf: &[u8]) -> Result<Message, Rejected> {
        if buf.len() > MAX_MESSAGE {
            return Err(Rejected::Oversize);
        }
        if buf.len() < HEADER_LEN + MAC_LEN {
            return Err(Rejected::Malformed);
        }
        if buf[..4] != MAGIC {
            return Err(Rejected::Magic);
        }
        let (body, tag) = buf.split_at(buf.len() - MAC_LEN);
        let mut mac = self.mac();
        mac.update(body);
        // Constant-time comparison.
        mac.verify_slice(tag)
            .map_err(|_| Rejected::Unauthenticated)?;
        let mut r = Reader { buf: body, at: 4 };
        let incarnation = r.u64()?;
        let seq = r.u64()?;
        let sent_unix_ms = r.u64()?;
        let count = r.u16()? as usize;
        let mut entries = Vec::with_capacity(count.min(MAX_MESSAGE / 30));
        for _ in 0..count {
            entries.push(r.entry()?);
        }
        if r.at != body.len() {
            return Err(Rejected::Malformed);
        }
        Ok(Message {
            incarnation,
            seq,
            sent_unix_ms,
            entries,
        })
    }
}

fn put_addr(buf: &mut Vec<u8>, a: IpAddr) {
    match a {
        IpAddr::V4(a) => buf.extend_from_slice(&a.octets()),
        IpAddr::V6(a) => buf.extend_from_slice(&a.octets()),
    }
}

fn put_entry(buf: &mut Vec<u8>, e: &SyncEntry) {
    buf.extend_from_slice(&e.tag.to_be_bytes());
    buf.push(e.flags);
    buf.push(e.proto);
    buf.push(if e.vip.is_ipv4() { 4 } else { 6 });
    buf.extend_from_slice(&e.vip.port().to_be_bytes());
    buf.extend_from_slice(&e.backend.port().to_be_bytes());
    put_addr(buf, e.vip.ip());
    put_addr(buf, e.backend.ip());
}

struct Reader<'a> {
    buf: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> Result<[u8; N], Rejected> {
        let b = self
            .buf
            .get(self.at..self.at + N)
            .ok_or(Rejected::Malformed)?;
        self.at += N;
        Ok(b.try_into().expect("N bytes"))
    }
    fn u8(&mut self) -> Result<u8, Rejected> {
        Ok(self.take::<1>()?[0])
    }
    fn u16(&mut self) -> Result<u16, Rejected> {
        Ok(u16::from_be_bytes(self.take()?))
    }
    fn u64(&mut self) -> Result<u64, Rejected> {
        Ok(u64::from_be_bytes(self.take()?))
    }
    fn addr(&mut self, family: u8) -> Result<IpAddr, Rejected> {
        Ok(match family {
            4 => IpAddr::V4(Ipv4Addr::from(self.take::<4>()?)),
            _ => IpAddr::V6(Ipv6Addr::from(self.take::<16>()?)),
        })
    }
    fn entry(&mut self) -> Result<SyncEntry, Rejected> {
        let tag = self.u64()?;
        let flags = self.u8()?;
        let proto = self.u8()?;
        let family = self.u8()?;
        if family != 4 && family != 6 {
            return Err(Rejected::Malformed);
        }
        let vip_port = self.u16()?;
        let backend_port = self.u16()?;
        let vip = self.addr(family)?;
        let backend = self.addr(family)?;
        if tag & lb_common::FLOW_TAG_FLAGS != 0 || tag == 0 {
            return Err(Rejected::Malformed);
        }
        Ok(SyncEntry {
            tag,
            flags: flags & CARRIED_FLAGS,
            proto,
            vip: SocketAddr::new(vip, vip_port),
            backend: SocketAddr::new(backend, backend_port),
        })
    }
}

/// Sequence numbers seen per sender, so that no message is applied twice
/// (a replay from the wire, or a duplicate): the highest seen and a
/// bitmap of the [`WINDOW`] below it, as IPsec does. A new incarnation
/// (the sender restarted) is taken only if its clock stamp is later than
/// the last accepted message's.
#[derive(Debug, Default)]
pub struct ReplayWindow {
    incarnation: u64,
    highest: u64,
    bitmap: u64,
    last_sent_ms: u64,
    started: bool,
}

/// Sequence numbers remembered below the highest.
pub const WINDOW: u64 = 64;

impl ReplayWindow {
    /// Whether `msg`, received at `now_unix_ms`, is new (and records it).
    pub fn accept(&mut self, msg: &Message, now_unix_ms: u64) -> bool {
        if now_unix_ms.saturating_sub(msg.sent_unix_ms) > MAX_AGE_MS
            || msg.sent_unix_ms.saturating_sub(now_unix_ms) > MAX_AGE_MS
        {
            return false;
        }
        if !self.started || msg.incarnation != self.incarnation {
            if self.started && msg.sent_unix_ms <= self.last_sent_ms {
                return false;
            }
            *self = ReplayWindow {
                incarnation: msg.incarnation,
                highest: msg.seq,
                bitmap: 1,
                last_sent_ms: msg.sent_unix_ms,
                started: true,
            };
            return true;
        }
        if msg.seq > self.highest {
            let shift = msg.seq - self.highest;
            self.bitmap = if shift >= WINDOW {
                0
            } else {
                self.bitmap << shift
            };
            self.bitmap |= 1;
            self.highest = msg.seq;
        } else {
            let back = self.highest - msg.seq;
            if back >= WINDOW || self.bitmap & (1 << back) != 0 {
                return false;
            }
            self.bitmap |= 1 << back;
        }
        self.last_sent_ms = self.last_sent_ms.max(msg.sent_unix_ms);
        true
    }
}

/// A token bucket: at most `per_sec` a second, bursts of `burst`.
#[derive(Debug)]
pub struct RateBound {
    per_sec: u32,
    burst: u32,
    tokens: f64,
    last_ms: u64,
}

/// Messages a gateway sends a peer per second at most (each up to
/// [`MAX_MESSAGE`]: ~240 kB/s, some 10 000 flows a second).
pub const SEND_MESSAGES_PER_SEC: u32 = 200;
/// Messages a gateway accepts from one peer per second at most (above
/// the sender's bound, for its bursts).
pub const RECEIVE_MESSAGES_PER_SEC: u32 = 400;

impl RateBound {
    pub fn new(per_sec: u32, burst: u32, now_ms: u64) -> RateBound {
        RateBound {
            per_sec,
            burst,
            tokens: burst as f64,
            last_ms: now_ms,
        }
    }

    /// Takes one token at `now_ms` if there is one.
    pub fn take(&mut self, now_ms: u64) -> bool {
        let elapsed = now_ms.saturating_sub(self.last_ms);
        self.last_ms = self.last_ms.max(now_ms);
        self.tokens =
            (self.tokens + elapsed as f64 * self.per_sec as f64 / 1000.0).min(self.burst as f64);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// This gateway's backends as messages name them: (protocol, VIP
/// endpoint, backend address) → its own backend reference, for backends
/// that may take a synced flow (active, draining or standby: not down).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LocalBackends {
    refs: HashMap<(u8, SocketAddr, SocketAddr), u32>,
    names: HashMap<u32, (u8, SocketAddr, SocketAddr)>,
}

impl LocalBackends {
    /// Records a backend; `up` false (down, or its slot being freed)
    /// leaves it out.
    pub fn insert(&mut self, proto: u8, vip: SocketAddr, backend: SocketAddr, r: u32, up: bool) {
        if up {
            self.refs.insert((proto, vip, backend), r);
            self.names.insert(r, (proto, vip, backend));
        }
    }

    /// The local reference for `e`'s backend, if this gateway has it up.
    pub fn resolve(&self, e: &SyncEntry) -> Option<u32> {
        self.refs.get(&(e.proto, e.vip, e.backend)).copied()
    }

    /// The addresses of a local reference (the sender's side of the same
    /// map: what to name a pinned backend in a message).
    pub fn name(&self, r: u32) -> Option<(u8, SocketAddr, SocketAddr)> {
        self.names.get(&r).copied()
    }
}

/// The entries a peer could not recompute, from this gateway's table:
/// live flows (the client's ACK seen, or UDP; not closing) whose pinned
/// backend is not the one the current ring gives for their ring hash
/// (`ring_choice(proto, vip, ring hash)`, this gateway's reference). New
/// flows pinned by the current ring are left out: every peer computes
/// them. A pin to a backend this gateway no longer names (freed, down) is
/// left out too: the data plane re-steers it anyway.
pub fn unrecomputable(
    slots: impl IntoIterator<Item = lb_common::FlowSlot>,
    local: &LocalBackends,
    mut ring_choice: impl FnMut(u8, SocketAddr, u32) -> Option<u32>,
) -> Vec<SyncEntry> {
    slots
        .into_iter()
        .filter_map(|slot| {
            let flags = slot.flags();
            if slot.tag == 0
                || flags & lb_common::FLOW_F_ACKED == 0
                || flags & lb_common::FLOW_F_CLOSING != 0
                || lb_common::flow_closed(flags)
            {
                return None;
            }
            let (proto, vip, backend) = local.name(slot.backend)?;
            let tag = slot.tag & !lb_common::FLOW_TAG_FLAGS;
            let ring = ring_choice(proto, vip, lb_common::flow_tag_ring_hash(tag));
            if ring == Some(slot.backend) {
                return None;
            }
            Some(SyncEntry {
                tag,
                flags: flags as u8 & CARRIED_FLAGS,
                proto,
                vip,
                backend,
            })
        })
        .collect()
}

/// What a receiver inserts from `entries`: (tag with flags, its own
/// backend reference), and how many it ignored (a backend it does not
/// have, or has down: that flow goes by its ring, as without sync).
pub fn to_local(entries: &[SyncEntry], local: &LocalBackends) -> (Vec<(u64, u32)>, usize) {
    let mut ignored = 0;
    let inserts = entries
        .iter()
        .filter_map(|e| match local.resolve(e) {
            Some(r) => Some((e.tag | u64::from(e.flags & CARRIED_FLAGS), r)),
            None => {
                ignored += 1;
                None
            }
        })
        .collect();
    (inserts, ignored)
}

pub mod task;
pub mod transport;

#[cfg(test)]
mod tests;
