//! `xdplb explain`: one client's frame run through the data plane's own
//! code on its live maps (the explain object, see
//! [`dataplane::Explainer`]), and what happened to it in words: the
//! programs and counters on its path, the flow table's answer, the ring's,
//! the backend and why, the frame that left and the verdict.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use lb_common::{
    ref_slot, ExplainTrace, GlobalCounter, BACKEND_ACTIVE, BACKEND_DOWN, BACKEND_DRAINING,
    EXPLAIN_NONE, EXPLAIN_PIN_CLOSED, EXPLAIN_PIN_DOWN, EXPLAIN_PIN_IDLE, EXPLAIN_PIN_KEEP,
    EXPLAIN_PIN_REOPENED, EXPLAIN_PIN_STALE, EXPLAIN_PROG_FRAG4, EXPLAIN_PROG_FRAG6,
    EXPLAIN_PROG_ICMP6, EXPLAIN_PROG_IPV6, EXPLAIN_PROG_MAIN, EXPLAIN_PROG_UDP4,
    EXPLAIN_PROG_UDP4_REPLY, EXPLAIN_PROG_UDP6, FLOW_WAYS, NO_BACKEND, RING_SLOTS,
};
use serde::Serialize;

use crate::{
    dataplane::{backend_name_index, DataplaneError, Explained, Explainer},
    packet::{L4Frame, TCP_ACK, TCP_SYN},
};

/// The source MAC of the frames explain builds: the client's (or its
/// router's) MAC is not known here, and the program reads it only to
/// answer to it.
pub const CLIENT_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x01];

/// XDP actions (uapi `enum xdp_action`).
pub const XDP_ABORTED: u32 = 0;
pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_TX: u32 = 3;
pub const XDP_REDIRECT: u32 = 4;

/// What the client sends: a TCP segment with `tcp_flags` (SYN, or an ACK
/// of an established connection) or a UDP datagram, to `dst_mac`.
pub fn client_frame(
    client: SocketAddr,
    vip: SocketAddr,
    udp: bool,
    tcp_flags: u8,
    dst_mac: [u8; 6],
) -> Vec<u8> {
    let mut f = if udp {
        L4Frame::udp(client, vip)
    } else {
        L4Frame::tcp(client, vip, tcp_flags)
    };
    f.src_mac = CLIENT_MAC;
    f.dst_mac = dst_mac;
    f.build()
}

/// The `--flags` of `xdplb explain`.
pub fn tcp_flags(name: &str) -> Option<u8> {
    match name {
        "syn" => Some(TCP_SYN),
        "ack" => Some(TCP_ACK),
        _ => None,
    }
}

/// A frame's addresses, as the program left it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FrameOut {
    pub src_mac: String,
    pub dst_mac: String,
    pub src: String,
    pub dst: String,
    pub protocol: &'static str,
    /// An IPIP / IPv6-in-IPv6 outer header (`tunnel` pools): its source
    /// and destination.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outer_src: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outer_dst: Option<String>,
    /// The interface it leaves by (the one whose MAC is its source).
    pub egress: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FlowLookup {
    /// "hit", "miss", or "none" (the path did not look).
    pub lookup: &'static str,
    pub buckets: Option<[u32; 2]>,
    /// The way holding the flow (0–7 first bucket, 8–15 second).
    pub way: Option<u32>,
    /// The backend slot its entry names, and the entry's flags.
    pub entry_backend: Option<u32>,
    pub entry_flags: Option<u32>,
    /// What the entry said: kept, backend down, closed, idle, stale,
    /// reopened.
    pub entry: Option<&'static str>,
    /// The way a new entry would take (or took), and whether the program
    /// would insert one.
    pub insert_way: Option<u32>,
    pub insert: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Chosen {
    pub slot: u32,
    pub name: String,
    pub state: &'static str,
}

/// Everything explain says about one frame.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Report {
    pub client: SocketAddr,
    pub vip: SocketAddr,
    pub protocol: &'static str,
    pub flags: Option<&'static str>,
    pub ingress: String,
    /// The programs that ran, in order.
    pub programs: Vec<&'static str>,
    /// The counters the program would have moved, in order (`xdplb
    /// stats`' names): the path taken.
    pub path: Vec<&'static str>,
    pub pool: Option<String>,
    pub vip_index: Option<u32>,
    pub flow: FlowLookup,
    /// The ring entry read: its index in the VIP's ring (0..ring_size),
    /// which of the VIP's two rings was live (0 or 1), and the backend
    /// slot it names (None: an empty entry).
    pub ring_index: Option<u32>,
    pub ring_live: Option<u32>,
    pub ring_backend: Option<u32>,
    pub backend: Option<Chosen>,
    pub new_flow: bool,
    pub why: String,
    /// XDP_REDIRECT, XDP_TX, XDP_PASS, XDP_DROP or XDP_ABORTED.
    pub verdict: &'static str,
    pub action: u32,
    /// The frame as it left (None when dropped, or passed unchanged).
    pub out: Option<FrameOut>,
    /// The bytes sent and the bytes as the program left them.
    #[serde(skip)]
    pub sent: Vec<u8>,
    #[serde(skip)]
    pub left: Vec<u8>,
}

pub fn verdict_name(action: u32) -> &'static str {
    match action {
        XDP_ABORTED => "XDP_ABORTED",
        XDP_DROP => "XDP_DROP",
        XDP_PASS => "XDP_PASS",
        XDP_TX => "XDP_TX",
        XDP_REDIRECT => "XDP_REDIRECT",
        _ => "unknown",
    }
}

/// `xdplb stats`' name of a counter.
pub fn counter_name(value: u16) -> &'static str {
    let v = u32::from(value);
    for (c, name) in [
        (GlobalCounter::Passed, "passed"),
        (GlobalCounter::Dropped, "dropped"),
        (GlobalCounter::Redirected, "redirected"),
        (GlobalCounter::Answered, "answered"),
    ] {
        if c as u32 == v {
            return name;
        }
    }
    GlobalCounter::DROP_REASONS
        .iter()
        .chain(GlobalCounter::EVENTS.iter())
        .find(|(c, _)| *c as u32 == v)
        .map_or("unknown", |(_, name)| *name)
}

fn programs(bits: u32) -> Vec<&'static str> {
    [
        (EXPLAIN_PROG_MAIN, "xdplb"),
        (EXPLAIN_PROG_IPV6, "xdplb_ipv6"),
        (EXPLAIN_PROG_UDP4, "xdplb_udp4"),
        (EXPLAIN_PROG_UDP4_REPLY, "xdplb_udp4_reply"),
        (EXPLAIN_PROG_UDP6, "xdplb_udp6"),
        (EXPLAIN_PROG_ICMP6, "xdplb_icmp6"),
        (EXPLAIN_PROG_FRAG4, "xdplb_frag4"),
        (EXPLAIN_PROG_FRAG6, "xdplb_frag6"),
    ]
    .into_iter()
    .filter(|(bit, _)| bits & bit != 0)
    .map(|(_, name)| name)
    .collect()
}

fn some(v: u32) -> Option<u32> {
    (v != EXPLAIN_NONE).then_some(v)
}

fn state_name(state: Option<u8>) -> &'static str {
    match state {
        None => "free",
        Some(BACKEND_ACTIVE) => "active",
        Some(BACKEND_DRAINING) => "draining",
        Some(BACKEND_DOWN) => "down",
        Some(_) => "standby",
    }
}

fn mac(m: &[u8]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Addresses of an IP header at `ip`: (src, dst, protocol, header length).
fn ip_header(frame: &[u8], ip: usize, v6: bool) -> Option<(IpAddr, IpAddr, u8, usize)> {
    if v6 {
        let h = frame.get(ip..ip + 40)?;
        let a = |o: usize| -> Option<IpAddr> {
            Some(IpAddr::V6(Ipv6Addr::from(
                <[u8; 16]>::try_from(&h[o..o + 16]).ok()?,
            )))
        };
        Some((a(8)?, a(24)?, h[6], 40))
    } else {
        let h = frame.get(ip..ip + 20)?;
        let a = |o: usize| IpAddr::V4(Ipv4Addr::new(h[o], h[o + 1], h[o + 2], h[o + 3]));
        Some((a(12), a(16), h[9], usize::from(h[0] & 0xf) * 4))
    }
}

/// What a frame the program let out carries.
pub fn frame_out(frame: &[u8]) -> Option<FrameOut> {
    let ethertype = u16::from_be_bytes([*frame.get(12)?, *frame.get(13)?]);
    let v6 = match ethertype {
        0x0800 => false,
        0x86dd => true,
        _ => return None,
    };
    let (mut src, mut dst, mut proto, mut len) = ip_header(frame, 14, v6)?;
    let mut at = 14;
    let mut outer = None;
    // IPIP (4) or IPv6-in-IPv6 (41): a tunnel pool's outer header.
    if proto == 4 || proto == 41 {
        outer = Some((src, dst));
        at += len;
        (src, dst, proto, len) = ip_header(frame, at, proto == 41)?;
    }
    let l4 = at + len;
    let port = |o: usize| -> Option<u16> {
        Some(u16::from_be_bytes([
            *frame.get(l4 + o)?,
            *frame.get(l4 + o + 1)?,
        ]))
    };
    let (protocol, src, dst) = match proto {
        6 | 17 => (
            if proto == 6 { "tcp" } else { "udp" },
            SocketAddr::new(src, port(0)?).to_string(),
            SocketAddr::new(dst, port(2)?).to_string(),
        ),
        1 | 58 => ("icmp", src.to_string(), dst.to_string()),
        _ => ("other", src.to_string(), dst.to_string()),
    };
    Some(FrameOut {
        src_mac: mac(&frame[6..12]),
        dst_mac: mac(&frame[0..6]),
        src,
        dst,
        protocol,
        outer_src: outer.map(|(s, _)| s.to_string()),
        outer_dst: outer.map(|(_, d)| d.to_string()),
        egress: None,
    })
}

fn ifname(ifindex: u32) -> String {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: buf has IF_NAMESIZE bytes, as if_indextoname requires.
    let p = unsafe { libc::if_indextoname(ifindex, buf.as_mut_ptr()) };
    if p.is_null() {
        return format!("ifindex {ifindex}");
    }
    // SAFETY: if_indextoname wrote a NUL-terminated name into buf.
    unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) }
        .to_string_lossy()
        .into_owned()
}

/// The question explain answers.
#[derive(Clone, Copy, Debug)]
pub struct Question {
    pub client: SocketAddr,
    pub vip: SocketAddr,
    pub udp: bool,
    pub tcp_flags: u8,
    pub ingress: u32,
}

/// The interface a frame from `client` arrives on: `iface` if given,
/// else the one the kernel routes `client` out of.
pub fn ingress(client: IpAddr, iface: Option<&str>) -> Result<u32, ExplainError> {
    if let Some(name) = iface {
        let c = std::ffi::CString::new(name).map_err(|_| ExplainError::NoInterface {
            iface: name.to_string(),
        })?;
        // SAFETY: a valid C string; resolved in this thread's namespace.
        let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
        if i == 0 {
            return Err(ExplainError::NoInterface {
                iface: name.to_string(),
            });
        }
        return Ok(i);
    }
    crate::netlink::route_oif(client)
        .map_err(|source| ExplainError::Route { client, source })?
        .ok_or(ExplainError::NoRoute { client })
}

/// Runs the question's frame through `explainer` and says what happened.
pub fn explain(explainer: &mut Explainer, q: &Question) -> Result<Report, ExplainError> {
    if q.client.is_ipv4() != q.vip.is_ipv4() {
        return Err(ExplainError::Families {
            client: q.client,
            vip: q.vip,
        });
    }
    let dst_mac = explainer
        .iface_mac(q.ingress)?
        .ok_or_else(|| ExplainError::NotAttached {
            iface: ifname(q.ingress),
        })?;
    let frame = client_frame(q.client, q.vip, q.udp, q.tcp_flags, dst_mac);
    let ran = explainer.run(&frame, q.ingress)?;
    Ok(report(explainer, q, &frame, &ran)?)
}

fn report(
    explainer: &Explainer,
    q: &Question,
    sent: &[u8],
    ran: &Explained,
) -> Result<Report, DataplaneError> {
    let t: &ExplainTrace = &ran.trace;
    let ring_size = explainer.ring_size().max(1);
    let n = (t.n_counters as usize).min(t.counters.len());
    let path: Vec<&'static str> = t.counters[..n].iter().map(|&c| counter_name(c)).collect();
    let has = |name: &str| path.contains(&name);
    let vip_index = some(t.vip_index);
    let pool = vip_index.map(|i| explainer.name(i)).transpose()?;
    let backend = match some(t.backend) {
        Some(slot) => Some(Chosen {
            slot,
            name: explainer.name(backend_name_index(slot))?,
            state: state_name(explainer.backend_state(slot)?),
        }),
        None => None,
    };
    // NO_BACKEND (an empty entry) is EXPLAIN_NONE's value too: whether the
    // ring was read is told by its index.
    let ring_ref = some(t.ring_index).map(|_| t.ring_ref);
    let flow = FlowLookup {
        lookup: if t.bucket_a == EXPLAIN_NONE {
            "none"
        } else if t.flow_hit != EXPLAIN_NONE {
            "hit"
        } else {
            "miss"
        },
        buckets: some(t.bucket_a).map(|a| [a, t.bucket_b]),
        way: some(t.flow_hit),
        entry_backend: some(t.entry_ref).map(ref_slot),
        entry_flags: some(t.entry_flags),
        entry: some(t.pinned).map(|p| match p {
            EXPLAIN_PIN_KEEP => "kept",
            EXPLAIN_PIN_DOWN => "backend down",
            EXPLAIN_PIN_CLOSED => "closed",
            EXPLAIN_PIN_IDLE => "idle",
            EXPLAIN_PIN_STALE => "stale",
            EXPLAIN_PIN_REOPENED => "reopened",
            _ => "unknown",
        }),
        insert_way: some(t.insert_way),
        insert: has("flow_insert"),
    };
    let ring_backend = ring_ref.filter(|&r| r != NO_BACKEND).map(ref_slot);
    let why = why(t, &flow, backend.as_ref(), ring_ref, &has);
    let changed = ran.frame.as_slice() != sent;
    let out = match ran.action {
        XDP_DROP | XDP_ABORTED => None,
        XDP_PASS if !changed => None,
        _ => frame_out(&ran.frame).map(|mut f| {
            f.egress = match ran.action {
                XDP_TX => Some(ifname(q.ingress)),
                XDP_PASS => Some("the kernel (its routing decides)".to_string()),
                _ => <[u8; 6]>::try_from(&ran.frame[6..12])
                    .ok()
                    .and_then(|m| explainer.iface_of_mac(m).ok().flatten())
                    .map(ifname),
            };
            f
        }),
    };
    Ok(Report {
        client: q.client,
        vip: q.vip,
        protocol: if q.udp { "udp" } else { "tcp" },
        flags: (!q.udp).then_some(if q.tcp_flags == TCP_SYN { "syn" } else { "ack" }),
        ingress: ifname(q.ingress),
        programs: programs(t.programs),
        path,
        pool,
        vip_index,
        flow,
        ring_index: some(t.ring_index).map(|i| i % ring_size),
        ring_live: some(t.ring_index).map(|i| i / ring_size % RING_SLOTS),
        ring_backend,
        backend,
        new_flow: t.new_flow != 0,
        why,
        verdict: verdict_name(ran.action),
        action: ran.action,
        out,
        sent: sent.to_vec(),
        left: ran.frame.clone(),
    })
}

/// The reason, in a sentence, from what the trace recorded.
fn why(
    t: &ExplainTrace,
    flow: &FlowLookup,
    backend: Option<&Chosen>,
    ring_ref: Option<u32>,
    has: &dyn Fn(&str) -> bool,
) -> String {
    let named = |b: &Chosen| format!("{} (slot {}, {})", b.name, b.slot, b.state);
    if has("no_pool_answered") {
        return "the VIP address has no pool at this port and protocol: answered as a closed \
                port (TCP RST, UDP ICMP port unreachable)"
            .into();
    }
    if has("no_pool") {
        return "the VIP address has no pool at this port and protocol: dropped".into();
    }
    if has("not_for_us") {
        return "the frame is not addressed to this host's MAC: left to the kernel".into();
    }
    if has("backend_opened") {
        return "a connection the backend opened from its service port: not a reply".into();
    }
    if t.reply_backend != EXPLAIN_NONE {
        return format!(
            "a reply from backend slot {}: rewritten back to the VIP",
            t.reply_backend
        );
    }
    if has("rejected") {
        return "the pool has no usable backend (empty ring entry): answered as a closed \
                port (on_empty = \"reject\")"
            .into();
    }
    if has("answer_limited") {
        return "the pool has no usable backend; over answers_per_sec: dropped".into();
    }
    if has("no_backend") {
        return "the pool has no usable backend (empty ring entry): dropped".into();
    }
    if has("stale_ring") {
        return format!(
            "the ring entry names backend slot {} which is down or gone (a ring caught \
             mid-rewrite): dropped",
            ring_ref.map_or(0, ref_slot)
        );
    }
    let Some(b) = backend else {
        if t.vip_index == EXPLAIN_NONE && t.bucket_a == EXPLAIN_NONE {
            return "not a VIP endpoint and not a backend's reply: left to the kernel".into();
        }
        return "no backend chosen".into();
    };
    match flow.entry {
        Some("kept") => {
            let drained = if b.state == "draining" {
                " (draining: it keeps its established flows, takes no new ones)"
            } else {
                ""
            };
            format!(
                "established flow: its entry (way {}) pins {}{drained}",
                flow.way.unwrap_or(0),
                named(b)
            )
        }
        Some(e) => {
            let before = match e {
                "backend down" => format!(
                    "its entry pinned backend slot {}, which is down: selected again",
                    flow.entry_backend.unwrap_or(0)
                ),
                "closed" => "its entry is a closed connection's, past its linger".into(),
                "idle" => "its entry idled out (flow_idle_ms)".into(),
                "stale" => "its entry names a backend slot since freed or reused".into(),
                _ => "a SYN on a closed connection's entry".into(),
            };
            format!(
                "{before}; the ring chooses {}{}",
                named(b),
                insert_words(flow)
            )
        }
        None => format!(
            "{}: the ring chooses {}{}",
            if flow.lookup == "miss" {
                "not in the flow table"
            } else {
                "no flow table lookup"
            },
            named(b),
            insert_words(flow)
        ),
    }
}

fn insert_words(flow: &FlowLookup) -> String {
    match (flow.insert, flow.insert_way) {
        (true, Some(way)) => {
            let bucket = if (way as usize) < FLOW_WAYS { 0 } else { 1 };
            let buckets = flow.buckets.unwrap_or([0, 0]);
            format!(
                "; a new entry would be written in bucket {} way {} (if the insert cap allows)",
                buckets[bucket],
                way as usize % FLOW_WAYS
            )
        }
        _ => "; no entry would be recorded (a FIN or RST the table does not know)".into(),
    }
}

/// `xdplb explain`'s text.
pub fn text(r: &Report) -> String {
    let mut s = String::new();
    let flags = r.flags.map(|f| format!(" {f}")).unwrap_or_default();
    s.push_str(&format!(
        "frame:    {} {} -> {}{flags}, arriving on {}\n",
        r.protocol, r.client, r.vip, r.ingress
    ));
    s.push_str(&format!("programs: {}\n", r.programs.join(" -> ")));
    s.push_str(&format!("path:     {}\n", r.path.join(", ")));
    if let Some(pool) = &r.pool {
        s.push_str(&format!(
            "pool:     {pool} (VIP index {})\n",
            r.vip_index.unwrap_or(0)
        ));
    }
    let f = &r.flow;
    match f.lookup {
        "none" => s.push_str("flow:     not looked up\n"),
        lookup => {
            let [a, b] = f.buckets.unwrap_or([0, 0]);
            s.push_str(&format!("flow:     {lookup} (buckets {a} and {b}"));
            if let Some(way) = f.way {
                let bucket = if (way as usize) < FLOW_WAYS { a } else { b };
                s.push_str(&format!(
                    "; bucket {bucket} way {}",
                    way as usize % FLOW_WAYS
                ));
            }
            s.push(')');
            if let (Some(e), Some(slot)) = (f.entry, f.entry_backend) {
                s.push_str(&format!(": entry names backend slot {slot}, {e}"));
            }
            s.push('\n');
        }
    }
    if let Some(i) = r.ring_index {
        let live = r.ring_live.unwrap_or(0);
        match r.ring_backend {
            Some(b) => s.push_str(&format!(
                "ring:     entry {i} (live ring {live}) -> backend slot {b}\n"
            )),
            None => s.push_str(&format!(
                "ring:     entry {i} (live ring {live}) -> empty\n"
            )),
        }
    }
    if let Some(b) = &r.backend {
        s.push_str(&format!(
            "backend:  {} (slot {}, {}){}\n",
            b.name,
            b.slot,
            b.state,
            if r.new_flow { ", new flow" } else { "" }
        ));
    }
    s.push_str(&format!("why:      {}\n", r.why));
    if let Some(o) = &r.out {
        if let (Some(os), Some(od)) = (&o.outer_src, &o.outer_dst) {
            s.push_str(&format!("tunnel:   {os} -> {od}\n"));
        }
        s.push_str(&format!(
            "out:      {} {} -> {}, {} -> {}, via {}\n",
            o.protocol,
            o.src,
            o.dst,
            o.src_mac,
            o.dst_mac,
            o.egress
                .as_deref()
                .unwrap_or("an interface xdplb does not know")
        ));
    }
    s.push_str(&format!("verdict:  {}\n", r.verdict));
    s
}

#[derive(Debug, thiserror::Error)]
pub enum ExplainError {
    #[error(transparent)]
    Dataplane(#[from] DataplaneError),
    #[error(
        "{iface} is not an interface the data plane is attached to: name the client-side \
         one with --interface"
    )]
    NotAttached { iface: String },
    #[error("{client} and {vip} are not of one address family")]
    Families { client: SocketAddr, vip: SocketAddr },
    #[error("no interface named {iface}")]
    NoInterface { iface: String },
    #[error(
        "no route to {client} here, so no client-side interface to arrive on: name it with \
         --interface"
    )]
    NoRoute { client: IpAddr },
    #[error("route lookup for {client}: {source}")]
    Route {
        client: IpAddr,
        #[source]
        source: std::io::Error,
    },
}
