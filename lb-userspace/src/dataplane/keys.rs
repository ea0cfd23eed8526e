//! How the maps key endpoints and name backends: conversions between
//! socket addresses and lb-common's map types.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

use lb_common::{limits::MAX_VIPS, Addr6, BackendMeta, L4Addr, L4Addr6, IPPROTO_TCP};

use super::{Endpoint, Protocol};

/// An IPv4 TCP endpoint as the maps key it.
pub fn l4addr(addr: SocketAddrV4) -> L4Addr {
    l4addr4(addr, IPPROTO_TCP)
}

/// An IPv4 endpoint of protocol `proto` (`IPPROTO_TCP`/`IPPROTO_UDP`) as
/// the maps key it.
pub fn l4addr4(addr: SocketAddrV4, proto: u8) -> L4Addr {
    L4Addr {
        addr: u32::from_ne_bytes(addr.ip().octets()),
        port: addr.port().to_be(),
        proto,
        _pad: 0,
    }
}

/// An IPv6 endpoint of protocol `proto` as `VIPS6` and `REPLIES6` key it.
pub fn l4addr6(addr: SocketAddrV6, proto: u8) -> L4Addr6 {
    L4Addr6 {
        addr: addr6(*addr.ip()),
        port: addr.port().to_be(),
        proto,
        _pad: 0,
    }
}

/// An IPv6 address as the maps hold it.
pub fn addr6(ip: Ipv6Addr) -> Addr6 {
    Addr6::from_octets(ip.octets())
}

/// The endpoint an [`L4Addr`] names.
pub fn socket_addr(a: &L4Addr) -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::from(a.addr.to_ne_bytes()), u16::from_be(a.port))
}

/// The endpoint an [`L4Addr6`] names.
pub fn socket_addr6(a: &L4Addr6) -> SocketAddrV6 {
    SocketAddrV6::new(Ipv6Addr::from(a.addr.octets()), u16::from_be(a.port), 0, 0)
}

/// An endpoint's map key, by family.
pub(super) enum Key {
    V4(L4Addr),
    V6(L4Addr6),
}

pub(super) fn key_of(e: Endpoint) -> Key {
    match e.addr {
        SocketAddr::V4(a) => Key::V4(l4addr4(a, e.protocol.ipproto())),
        SocketAddr::V6(a) => Key::V6(l4addr6(a, e.protocol.ipproto())),
    }
}

/// The endpoint of a `VIPS` / `REPLIES` key; `None` for a protocol xdplb
/// never writes.
pub(super) fn endpoint4(k: &L4Addr) -> Option<Endpoint> {
    Some(Endpoint {
        addr: SocketAddr::V4(socket_addr(k)),
        protocol: Protocol::from_ipproto(k.proto)?,
    })
}

pub(super) fn endpoint6(k: &L4Addr6) -> Option<Endpoint> {
    Some(Endpoint {
        addr: SocketAddr::V6(socket_addr6(k)),
        protocol: Protocol::from_ipproto(k.proto)?,
    })
}

/// A backend's address from its `BACKENDS` entry, or for an IPv6 slot
/// (`BackendMeta::addr` 0: no IPv4 backend is 0.0.0.0) from
/// `BACKEND_ADDRS6`.
pub(super) fn backend_addr(meta: &BackendMeta, v6: impl FnOnce() -> Option<Addr6>) -> SocketAddr {
    let port = u16::from_be(meta.port);
    if meta.addr != 0 {
        return SocketAddr::new(IpAddr::V4(Ipv4Addr::from(meta.addr.to_ne_bytes())), port);
    }
    let a = v6().unwrap_or_default();
    SocketAddr::new(IpAddr::V6(Ipv6Addr::from(a.octets())), port)
}

/// A backend slot as the controller writes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendSlot {
    pub slot: u32,
    pub vip_index: u32,
    /// Either family: an IPv6 slot keeps its address in `BACKEND_ADDRS6`.
    pub addr: SocketAddr,
    pub state: u8,
    pub flags: u8,
}

/// Index of a backend's name in `NAMES`.
pub const fn backend_name_index(slot: u32) -> u32 {
    MAX_VIPS + slot
}
