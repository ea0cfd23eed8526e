//! Talking to the kernel's routing netlink (netlink-packet-route on a
//! netlink-sys socket): the route `ip route get` would pick, and link
//! events (an interface deleted, or created again).
use std::{io, net::IpAddr};

use netlink_packet_core::{NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_REQUEST};
use netlink_packet_route::{
    link::{LinkAttribute, LinkMessage},
    route::{RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteType},
    AddressFamily, RouteNetlinkMessage,
};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};
use tokio::io::unix::AsyncFd;

/// `RTNLGRP_LINK` (linux/rtnetlink.h): the multicast group of link events.
const RTNLGRP_LINK: u32 = 1;
/// Largest netlink message read at once (the kernel sends a page or two).
const RECV_BUF: usize = 64 * 1024;

fn invalid(e: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e.to_string())
}

/// The interface the kernel routes `dst` out of (one RTM_GETROUTE, as
/// `ip route get`), or None when it has no route. Routing by source is not
/// asked about, as the data plane's lookup does not distinguish it.
pub fn route_oif(dst: IpAddr) -> io::Result<Option<u32>> {
    Ok(route_get(dst)?.and_then(|r| {
        r.attributes.iter().find_map(|a| match a {
            RouteAttribute::Oif(i) => Some(*i),
            _ => None,
        })
    }))
}

/// Whether the kernel delivers packets to `dst` locally (`ip route get`
/// says `local`): an address of an interface, or of a `local` route.
pub fn is_local(dst: IpAddr) -> io::Result<bool> {
    Ok(route_get(dst)?.is_some_and(|r| r.header.kind == RouteType::Local))
}

/// The route `ip route get dst` shows; None when there is none.
fn route_get(dst: IpAddr) -> io::Result<Option<RouteMessage>> {
    let mut socket = Socket::new(NETLINK_ROUTE)?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    let mut route = RouteMessage::default();
    route.header = RouteHeader {
        address_family: match dst {
            IpAddr::V4(_) => AddressFamily::Inet,
            IpAddr::V6(_) => AddressFamily::Inet6,
        },
        destination_prefix_length: if dst.is_ipv4() { 32 } else { 128 },
        ..route.header
    };
    route
        .attributes
        .push(RouteAttribute::Destination(RouteAddress::from(dst)));
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST;
    let mut req = NetlinkMessage::new(
        header,
        NetlinkPayload::from(RouteNetlinkMessage::GetRoute(route)),
    );
    req.finalize();
    let mut buf = vec![0; req.buffer_len()];
    req.serialize(&mut buf);
    socket.send(&buf, 0)?;
    let (reply, _) = socket.recv_from_full()?;
    let msg = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&reply).map_err(invalid)?;
    Ok(match msg.payload {
        NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewRoute(r)) => Some(r),
        // An error answer (ENETUNREACH, EHOSTUNREACH, …): no usable route.
        _ => None,
    })
}

/// What happened to an interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LinkEvent {
    /// Created, or changed (up, down, renamed).
    New {
        index: u32,
        name: String,
    },
    Deleted {
        index: u32,
        name: String,
    },
}

/// Link events of this network namespace, as they happen.
pub struct LinkEvents {
    socket: AsyncFd<Socket>,
    /// Events read but not yet handed out.
    pending: std::collections::VecDeque<LinkEvent>,
}

impl LinkEvents {
    /// Subscribes to `RTNLGRP_LINK`. Needs a tokio runtime.
    pub fn subscribe() -> io::Result<LinkEvents> {
        let mut socket = Socket::new(NETLINK_ROUTE)?;
        socket.bind(&SocketAddr::new(0, 0))?;
        socket.add_membership(RTNLGRP_LINK)?;
        socket.set_non_blocking(true)?;
        // SAFETY: the socket owns its descriptor and keeps it open, the
        // one `as_raw_fd` returns, for as long as it lives inside the
        // AsyncFd.
        let socket = unsafe { AsyncFd::register(socket) }.map_err(io::Error::from)?;
        Ok(LinkEvents {
            socket,
            pending: Default::default(),
        })
    }

    /// The next event. An overrun receive buffer (ENOBUFS: events were
    /// lost) is reported as an error; the caller re-checks everything.
    pub async fn next(&mut self) -> io::Result<LinkEvent> {
        loop {
            if let Some(e) = self.pending.pop_front() {
                return Ok(e);
            }
            let mut guard = self.socket.readable().await?;
            let mut buf = vec![0u8; RECV_BUF];
            let n = match guard.try_io(|s| s.get_ref().recv(&mut &mut buf[..], 0)) {
                Ok(r) => r?,
                Err(_would_block) => continue,
            };
            self.pending.extend(parse_link_events(&buf[..n]));
        }
    }
}

/// The link events in one datagram (several messages may share it).
fn parse_link_events(mut bytes: &[u8]) -> Vec<LinkEvent> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let Ok(msg) = NetlinkMessage::<RouteNetlinkMessage>::deserialize(bytes) else {
            break;
        };
        let len = msg.header.length as usize;
        let event = |l: &LinkMessage| {
            let name = l.attributes.iter().find_map(|a| match a {
                LinkAttribute::IfName(n) => Some(n.clone()),
                _ => None,
            })?;
            Some((l.header.index, name))
        };
        match msg.payload {
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(l)) => {
                out.extend(event(&l).map(|(index, name)| LinkEvent::New { index, name }));
            }
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelLink(l)) => {
                out.extend(event(&l).map(|(index, name)| LinkEvent::Deleted { index, name }));
            }
            _ => {}
        }
        if len == 0 || len > bytes.len() {
            break;
        }
        // Messages are 4-byte aligned (NLMSG_ALIGN).
        bytes = &bytes[((len + 3) & !3).min(bytes.len())..];
    }
    out
}

#[cfg(test)]
mod tests {
    /// Loopback leaves through lo in any namespace.
    #[test]
    fn routes_to_loopback_leave_through_lo() {
        let lo = crate::netlink::route_oif("127.0.0.1".parse().unwrap()).unwrap();
        let lo6 = crate::netlink::route_oif("::1".parse().unwrap()).unwrap();
        let index = |n: &str| {
            let c = std::ffi::CString::new(n).unwrap();
            // SAFETY: a valid NUL-terminated name.
            unsafe { libc::if_nametoindex(c.as_ptr()) }
        };
        assert_eq!(lo, Some(index("lo")));
        assert_eq!(lo6, Some(index("lo")));
    }
}
