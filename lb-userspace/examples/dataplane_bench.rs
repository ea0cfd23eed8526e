//! `cargo xtask bench dataplane`: nanoseconds per packet of the XDP
//! program under BPF_PROG_TEST_RUN, for the established-flow, new-flow and
//! non-VIP paths and for the XDP_TX floor, every iteration on the original
//! frame (see `lb-ebpf/src/bench.rs`). Each path's counter must rise by
//! exactly the repeat count, or the figure measured something else and the
//! run fails.
//!
//! The new-flow path runs with the insert-rate cap off, after the table
//! was filled (`--prefill 0` skips that), and its proof is the table's
//! insert counter; `new_flow_capped` is the same SYN over the cap.
//!
//! The same three paths for an IPv6 TCP VIP (`_v6`: NAT66, a 74-byte
//! frame, the smallest IPv6 TCP segment) and an IPv4 UDP VIP (`_udp`:
//! 64 bytes; every datagram of an unknown flow is a new flow), published
//! as the controller publishes them (see [`publish_pool`]).
//!
//! Usage: dataplane_bench [--repeat N] [--runs N] [--flow-table N] [--prefill 0|1]
#[path = "../tests/common/mod.rs"]
mod common;

use std::net::{SocketAddr, SocketAddrV4, SocketAddrV6};

use aya::{
    maps::{PerCpuArray, PerCpuValues, ProgramArray},
    programs::{TestRun, TestRunOptions, Xdp},
    util::nr_cpus,
    EbpfLoader,
};
use common::{backend_mac, xdp_md, TestNs, CLIENT_MAC, IN_MAC};
use lb_common::{
    bench::{BenchFrame, BENCH_FRAME_LEN, BENCH_FRAME_MAX},
    GlobalCounter, BACKEND_ACTIVE, IPPROTO_TCP, IPPROTO_UDP,
};
use xdplb::{
    dataplane::{self, BackendSlot, CounterReader, Counters, Dataplane, Shape, Tuning},
    packet::{TcpFrame, TCP_ACK, TCP_SYN},
};

static BENCH_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb-ebpf-bench"));

const XDP_TX: u32 = 3;
const VIP: &str = "198.18.2.10:80";
const DSR_VIP: &str = "198.18.2.11:80";
const TUNNEL_VIP: &str = "198.18.2.12:80";
const XDP_PASS: u32 = 2;
const XDP_REDIRECT: u32 = 4;

/// The IPv6 TCP pool: VIP index, its backends' slots, addresses.
const V6_INDEX: u32 = 3;
const V6_SLOTS: std::ops::Range<u32> = 9..12;
const V6_CLIENT: &str = "[2001:2::2]:40000";
const V6_VIP: &str = "[2001:2:0:2::10]:80";
const V6_NON_VIP: &str = "[2001:2:0:2::99]:80";
/// The IPv4 UDP pool.
const UDP_INDEX: u32 = 4;
const UDP_SLOTS: std::ops::Range<u32> = 12..15;
const UDP_VIP: &str = "198.18.2.13:53";
const UDP_NON_VIP: &str = "198.18.2.99:53";
/// `flow_idle_ms` of the UDP pool: the contract's default.
const UDP_FLOW_IDLE_MS: u32 = 30_000;
/// The smallest IPv6 TCP frame: Ethernet 14 + IPv6 40 + TCP 20.
const V6_FRAME_LEN: usize = 74;

fn arg(args: &[String], name: &str, default: u64) -> u64 {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(|v| v.parse().expect("numeric argument"))
        .unwrap_or(default)
}

/// Ethernet frame of a full 1500-byte IP packet.
const FULL_FRAME_LEN: usize = 1514;

fn tcp_frame(dst: &str, flags: u8, len: usize) -> TcpFrame {
    let mut f = TcpFrame::new(
        "198.18.0.2:40000".parse().unwrap(),
        dst.parse::<SocketAddrV4>().unwrap(),
        flags,
    );
    f.src_mac = CLIENT_MAC;
    f.dst_mac = IN_MAC;
    f.payload = (0..len - 54).map(|i| i as u8).collect();
    f
}

fn frame(dst: &str, flags: u8) -> Vec<u8> {
    tcp_frame(dst, flags, BENCH_FRAME_LEN).build()
}

/// The frame as a sender with checksum offload hands it over.
fn partial(dst: &str, flags: u8, len: usize) -> Vec<u8> {
    tcp_frame(dst, flags, len).build_partial()
}

/// One's-complement sum of `data` (odd length padded with a zero byte),
/// not folded.
fn sum16(data: &[u8]) -> u32 {
    data.chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum()
}

fn fold(mut s: u32) -> u16 {
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    !(s as u16)
}

/// An Ethernet frame of an IPv6 TCP segment with `flags`, `len` bytes in
/// all (at least [`V6_FRAME_LEN`]), checksum complete.
fn tcp6_frame(src: &str, dst: &str, flags: u8, len: usize) -> Vec<u8> {
    let src: SocketAddrV6 = src.parse().unwrap();
    let dst: SocketAddrV6 = dst.parse().unwrap();
    assert!(len >= V6_FRAME_LEN);
    let l4_len = len - 14 - 40;
    let mut f = Vec::with_capacity(len);
    f.extend_from_slice(&IN_MAC);
    f.extend_from_slice(&CLIENT_MAC);
    f.extend_from_slice(&0x86ddu16.to_be_bytes());
    f.extend_from_slice(&[0x60, 0, 0, 0]);
    f.extend_from_slice(&(l4_len as u16).to_be_bytes());
    f.extend_from_slice(&[IPPROTO_TCP, 64]);
    f.extend_from_slice(&src.ip().octets());
    f.extend_from_slice(&dst.ip().octets());
    let l4 = f.len();
    f.extend_from_slice(&src.port().to_be_bytes());
    f.extend_from_slice(&dst.port().to_be_bytes());
    f.extend_from_slice(&1u32.to_be_bytes()); // seq
    f.extend_from_slice(&(if flags & TCP_ACK != 0 { 1u32 } else { 0 }).to_be_bytes());
    f.extend_from_slice(&[5 << 4, flags]);
    f.extend_from_slice(&64240u16.to_be_bytes()); // window
    f.extend_from_slice(&[0, 0, 0, 0]); // checksum, urgent pointer
    f.extend((0..l4_len - 20).map(|i| i as u8));
    let pseudo = sum16(&src.ip().octets())
        + sum16(&dst.ip().octets())
        + l4_len as u32
        + u32::from(IPPROTO_TCP);
    let c = fold(pseudo + sum16(&f[l4..]));
    f[l4 + 16..l4 + 18].copy_from_slice(&c.to_be_bytes());
    f
}

/// An Ethernet frame of an IPv4 UDP datagram, `len` bytes in all,
/// checksums complete (a UDP checksum of 0 would be the "none" case).
fn udp4_frame(dst: &str, len: usize) -> Vec<u8> {
    let src: SocketAddrV4 = "198.18.0.2:40000".parse().unwrap();
    let dst: SocketAddrV4 = dst.parse().unwrap();
    let ip_len = len - 14;
    let udp_len = ip_len - 20;
    let mut f = Vec::with_capacity(len);
    f.extend_from_slice(&IN_MAC);
    f.extend_from_slice(&CLIENT_MAC);
    f.extend_from_slice(&0x0800u16.to_be_bytes());
    f.extend_from_slice(&[0x45, 0]);
    f.extend_from_slice(&(ip_len as u16).to_be_bytes());
    f.extend_from_slice(&[0, 1, 0x40, 0, 64, IPPROTO_UDP, 0, 0]); // id, DF, ttl
    f.extend_from_slice(&src.ip().octets());
    f.extend_from_slice(&dst.ip().octets());
    let c = xdplb::packet::ipv4_checksum(&f[14..34]);
    f[24..26].copy_from_slice(&c.to_be_bytes());
    let l4 = f.len();
    f.extend_from_slice(&src.port().to_be_bytes());
    f.extend_from_slice(&dst.port().to_be_bytes());
    f.extend_from_slice(&(udp_len as u16).to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.extend((0..udp_len - 8).map(|i| i as u8));
    let pseudo = sum16(&src.ip().octets())
        + sum16(&dst.ip().octets())
        + udp_len as u32
        + u32::from(IPPROTO_UDP);
    let c = match fold(pseudo + sum16(&f[l4..])) {
        0 => 0xffff,
        c => c,
    };
    f[l4 + 6..l4 + 8].copy_from_slice(&c.to_be_bytes());
    f
}

/// A pool for [`publish_pool`].
struct RawPool {
    index: u32,
    vip: SocketAddr,
    /// `IPPROTO_TCP` or `IPPROTO_UDP`.
    proto: u8,
    /// (slot, address) of each backend.
    backends: Vec<(u32, SocketAddr)>,
    flow_idle_ms: u32,
}

/// Publishes a pool of either family and protocol as the controller does:
/// each backend slot through [`Dataplane::write_backend`], then the ring
/// and the VIP through [`Dataplane::publish_vip_idle`].
fn publish_pool(dp: &mut Dataplane, ring_size: u32, pool: &RawPool) -> anyhow::Result<()> {
    let RawPool {
        index,
        vip,
        proto,
        ref backends,
        flow_idle_ms,
    } = *pool;
    for &(slot, addr) in backends.iter() {
        dp.write_backend(&BackendSlot {
            slot,
            vip_index: index,
            addr,
            state: BACKEND_ACTIVE,
            flags: 0,
        })?;
    }
    // Slots: publishing adds each slot's generation.
    let ring: Vec<u32> = (0..ring_size as usize)
        .map(|i| backends[i % backends.len()].0)
        .collect();
    let endpoint = if proto == IPPROTO_UDP {
        xdplb::config::Endpoint::udp(vip)
    } else {
        xdplb::config::Endpoint::tcp(vip)
    };
    dp.publish_vip_idle(endpoint, index, &ring, 0, flow_idle_ms)?;
    Ok(())
}

/// The bench namespace's IPv6 side: 2001:2::1/64 on `in0`, 2001:2:0:1::1/64
/// on `out0` (no DAD), permanent neighbours for the client 2001:2::2 and
/// the backends 2001:2:0:1::11.., IPv6 forwarding on (`bpf_fib_lookup`
/// for AF_INET6 needs it). Idempotent (`replace`).
fn add_ipv6(ns: &TestNs, backends: u8) -> anyhow::Result<()> {
    let run = |args: &[&str]| -> anyhow::Result<()> {
        let out = std::process::Command::new("ip").args(args).output()?;
        anyhow::ensure!(
            out.status.success(),
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok(())
    };
    let mac = |m: [u8; 6]| {
        m.iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":")
    };
    let n = ns.name.as_str();
    for key in ["all", "default"] {
        run(&[
            "netns",
            "exec",
            n,
            "sysctl",
            "-qw",
            &format!("net.ipv6.conf.{key}.forwarding=1"),
        ])?;
    }
    run(&[
        "-n",
        n,
        "addr",
        "replace",
        "2001:2::1/64",
        "dev",
        "in0",
        "nodad",
    ])?;
    run(&[
        "-n",
        n,
        "addr",
        "replace",
        "2001:2:0:1::1/64",
        "dev",
        "out0",
        "nodad",
    ])?;
    let client = mac(CLIENT_MAC);
    run(&[
        "-n",
        n,
        "neigh",
        "replace",
        "2001:2::2",
        "lladdr",
        &client,
        "dev",
        "in0",
        "nud",
        "permanent",
    ])?;
    for i in 0..backends {
        let addr = format!("2001:2:0:1::{}", 11 + i);
        let m = mac(backend_mac(i));
        run(&[
            "-n",
            n,
            "neigh",
            "replace",
            &addr,
            "lladdr",
            &m,
            "dev",
            "out0",
            "nud",
            "permanent",
        ])?;
    }
    Ok(())
}

/// Packets sent to the backends of `slots` (client → backend), summed.
fn sent_to(c: &Counters, slots: std::ops::Range<u32>) -> u64 {
    c.backends
        .iter()
        .filter(|b| slots.contains(&b.slot))
        .map(|b| b.counters.packets)
        .sum()
}

struct Path {
    name: &'static str,
    bytes: Vec<u8>,
    vary: bool,
    floor: bool,
    action: u32,
    /// The counter that must rise by the repeat count.
    proof: fn(&Counters) -> u64,
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let repeat = arg(&args, "--repeat", 1_000_000) as u32;
    let runs = arg(&args, "--runs", 5) as usize;
    let flow_table = arg(&args, "--flow-table", 1_048_576) as u32;
    let prefill = arg(&args, "--prefill", 1) != 0;
    let ns = TestNs::new(3);
    let pin_path =
        std::path::PathBuf::from(format!("/sys/fs/bpf/xdplb-bench-{}", std::process::id()));
    let result = run(&ns, &pin_path, repeat, runs, flow_table, prefill);
    let _ = dataplane::down(&pin_path);
    result
}

fn run(
    ns: &TestNs,
    pin_path: &std::path::Path,
    repeat: u32,
    runs: usize,
    flow_table: u32,
    prefill: bool,
) -> anyhow::Result<()> {
    let ring_size = 65537;
    let shape = Shape {
        pin_path: pin_path.to_path_buf(),
        ring_size,
        flow_table_size: flow_table,
    };
    // The insert-rate cap off: the new-flow line measures real inserts.
    let mut dp = Dataplane::load_tuned(
        shape.clone(),
        Tuning {
            max_flow_inserts_per_sec: 0,
            tunnel_source_v4: Some("198.18.1.1".parse()?),
            tunnel_source_v6: None,
        },
    )?;
    // The same maps under a program whose cap is 1 insert a second: the
    // capped path (Katran's stock new-flow figure is of this path).
    let capped = Dataplane::load_tuned(
        shape,
        Tuning {
            max_flow_inserts_per_sec: 1,
            ..Default::default()
        },
    )?;
    // Its load pointed the shared tail-call table at its own (capped)
    // IPv6 and UDP programs; the uncapped lines need the uncapped ones.
    dp.install_tails()?;
    let vip: SocketAddrV4 = "198.18.2.10:80".parse()?;
    dp.write_name(0, "bench")?;
    for i in 0..3u32 {
        let addr: SocketAddrV4 = format!("198.18.1.{}:8080", 11 + i).parse()?;
        dp.write_backend(&BackendSlot {
            slot: i,
            vip_index: 0,
            addr: addr.into(),
            state: BACKEND_ACTIVE,
            flags: 0,
        })?;
        dp.write_reply(addr, vip, i, 0)?;
    }
    let ring: Vec<u32> = (0..ring_size).map(|i| i % 3).collect();
    dp.publish_vip(vip, 0, &ring, 0)?;
    // A dsr pool (VIP index 1) and a tunnel pool (index 2) on the same
    // backends' addresses, port 80 (the VIP's, as direct return needs).
    for (index, flags) in [(1u32, lb_common::VIP_F_DSR), (2, lb_common::VIP_F_TUNNEL)] {
        let vip: SocketAddrV4 = format!("198.18.2.{}:80", 10 + index).parse()?;
        let mut ring = Vec::with_capacity(ring_size as usize);
        for i in 0..3u32 {
            let slot = index * 3 + i;
            dp.write_backend(&BackendSlot {
                slot,
                vip_index: index,
                addr: format!("198.18.1.{}:80", 11 + i).parse()?,
                state: BACKEND_ACTIVE,
                flags: 0,
            })?;
            ring.push(slot);
        }
        let ring: Vec<u32> = (0..ring_size as usize).map(|i| ring[i % 3]).collect();
        dp.publish_vip(vip, index, &ring, flags)?;
    }
    // An IPv6 TCP pool and an IPv4 UDP pool on the same three backends'
    // hosts (see `publish_pool`).
    add_ipv6(ns, 3)?;
    dp.write_name(V6_INDEX, "bench6")?;
    let v6 = RawPool {
        index: V6_INDEX,
        vip: V6_VIP.parse()?,
        proto: IPPROTO_TCP,
        backends: V6_SLOTS
            .zip(0u32..)
            .map(|(slot, i)| {
                (
                    slot,
                    format!("[2001:2:0:1::{}]:8080", 11 + i).parse().unwrap(),
                )
            })
            .collect(),
        flow_idle_ms: 0,
    };
    publish_pool(&mut dp, ring_size, &v6)?;
    dp.write_name(UDP_INDEX, "bench_udp")?;
    let udp = RawPool {
        index: UDP_INDEX,
        vip: UDP_VIP.parse()?,
        proto: IPPROTO_UDP,
        backends: UDP_SLOTS
            .zip(0u32..)
            .map(|(slot, i)| (slot, format!("198.18.1.{}:5300", 11 + i).parse().unwrap()))
            .collect(),
        flow_idle_ms: UDP_FLOW_IDLE_MS,
    };
    publish_pool(&mut dp, ring_size, &udp)?;
    dp.sync_host(&["in0".to_string(), "out0".to_string()])?;

    let mut bench = EbpfLoader::new().load(BENCH_OBJECT)?;
    for name in ["bench_restore", "bench_floor"] {
        let p: &mut Xdp = bench.program_mut(name).expect(name).try_into()?;
        p.load()?;
    }
    let floor_fd = {
        let p: &Xdp = bench.program("bench_floor").unwrap().try_into()?;
        p.fd()?.try_clone()?
    };
    let lb_fd = dp.program().fd()?.try_clone()?;
    let capped_fd = capped.program().fd()?.try_clone()?;
    let mut target = ProgramArray::try_from(bench.take_map("TARGET").expect("TARGET"))?;
    let mut frames: PerCpuArray<_, BenchFrame> =
        PerCpuArray::try_from(bench.take_map("FRAME").expect("FRAME"))?;
    let restore: &Xdp = bench.program("bench_restore").unwrap().try_into()?;
    let reader = CounterReader::open(pin_path)?;

    // The established path needs its flow in the table first.
    let established = frame(VIP, TCP_ACK);
    let syn = frame(VIP, TCP_SYN);
    let once = |bytes: &[u8]| {
        let md = xdp_md(bytes.len(), ns.in_ifindex);
        let mut out = vec![0u8; bytes.len() + 256];
        dp.program().test_run(TestRunOptions {
            data_in: Some(bytes),
            data_out: Some(&mut out),
            ctx_in: Some(&md),
            ..Default::default()
        })
    };
    once(&syn)?;
    let dsr = frame(DSR_VIP, TCP_ACK);
    let tunnel = frame(TUNNEL_VIP, TCP_ACK);
    once(&frame(DSR_VIP, TCP_SYN))?;
    once(&frame(TUNNEL_VIP, TCP_SYN))?;
    let full = tcp_frame(VIP, TCP_ACK, FULL_FRAME_LEN).build();
    // The IPv6 and UDP established paths need their flows in the tables
    // too: a SYN, and (UDP has none) the flow's first datagram.
    let established_v6 = tcp6_frame(V6_CLIENT, V6_VIP, TCP_ACK, V6_FRAME_LEN);
    let syn_v6 = tcp6_frame(V6_CLIENT, V6_VIP, TCP_SYN, V6_FRAME_LEN);
    let udp = udp4_frame(UDP_VIP, BENCH_FRAME_LEN);
    for (what, bytes) in [("IPv6 SYN", &syn_v6), ("UDP datagram", &udp)] {
        let r = once(bytes)?;
        anyhow::ensure!(
            r.return_value == XDP_REDIRECT,
            "the seeding {what} got action {} (expected {XDP_REDIRECT}, redirect): \
             does this data plane balance IPv6 and UDP VIPs?",
            r.return_value
        );
    }

    let paths = [
        Path {
            name: "established",
            bytes: established.clone(),
            vary: false,
            floor: false,
            action: XDP_REDIRECT,
            proof: |c| c.vips[0].counters.packets,
        },
        Path {
            name: "new_flow",
            bytes: syn.clone(),
            vary: true,
            floor: false,
            action: XDP_REDIRECT,
            proof: |c| c.get(GlobalCounter::FlowInserts),
        },
        Path {
            name: "non_vip",
            bytes: frame("198.18.2.99:80", TCP_ACK),
            vary: false,
            floor: false,
            action: XDP_PASS,
            proof: |c| c.get(GlobalCounter::Passed),
        },
        Path {
            name: "floor",
            bytes: established.clone(),
            vary: false,
            floor: true,
            action: XDP_TX,
            proof: |_| 0,
        },
        // Completing a partial checksum: the same established flow, with
        // the checksum left as an offloading sender leaves it; compared
        // with the complete frame of the same size.
        Path {
            name: "established_partial",
            bytes: partial(VIP, TCP_ACK, BENCH_FRAME_LEN),
            vary: false,
            floor: false,
            action: XDP_REDIRECT,
            proof: |c| c.get(GlobalCounter::PartialChecksum),
        },
        Path {
            name: "established_1500",
            bytes: full.clone(),
            vary: false,
            floor: false,
            action: XDP_REDIRECT,
            proof: |c| c.vips[0].counters.packets,
        },
        Path {
            name: "established_1500_partial",
            bytes: partial(VIP, TCP_ACK, FULL_FRAME_LEN),
            vary: false,
            floor: false,
            action: XDP_REDIRECT,
            proof: |c| c.get(GlobalCounter::PartialChecksum),
        },
        // Direct server return, established: the MAC rewrite alone, and the
        // IPIP encapsulation.
        Path {
            name: "established_dsr",
            bytes: dsr,
            vary: false,
            floor: false,
            action: XDP_REDIRECT,
            proof: |c| c.get(GlobalCounter::DsrSent),
        },
        Path {
            name: "established_tunnel",
            bytes: tunnel,
            vary: false,
            floor: false,
            action: XDP_REDIRECT,
            proof: |c| c.get(GlobalCounter::TunnelSent),
        },
        Path {
            name: "new_flow_capped",
            bytes: syn.clone(),
            vary: true,
            floor: false,
            action: XDP_REDIRECT,
            // Each iteration is either capped or (once a second) inserted.
            proof: |c| c.get(GlobalCounter::FlowInsertsCapped) + c.get(GlobalCounter::FlowInserts),
        },
        Path {
            name: "floor_1500",
            bytes: full,
            vary: false,
            floor: true,
            action: XDP_TX,
            proof: |_| 0,
        },
        // IPv6 TCP (NAT66): established, new flow, not a VIP.
        Path {
            name: "established_v6",
            bytes: established_v6,
            vary: false,
            floor: false,
            action: XDP_REDIRECT,
            proof: |c| sent_to(c, V6_SLOTS),
        },
        Path {
            name: "new_flow_v6",
            bytes: syn_v6,
            vary: true,
            floor: false,
            action: XDP_REDIRECT,
            proof: |c| c.get(GlobalCounter::FlowInserts),
        },
        Path {
            name: "non_vip_v6",
            bytes: tcp6_frame(V6_CLIENT, V6_NON_VIP, TCP_ACK, V6_FRAME_LEN),
            vary: false,
            floor: false,
            action: XDP_PASS,
            proof: |c| c.get(GlobalCounter::Passed),
        },
        // IPv4 UDP: established, new flow (each datagram from a new
        // source), not a VIP.
        Path {
            name: "established_udp",
            bytes: udp.clone(),
            vary: false,
            floor: false,
            action: XDP_REDIRECT,
            proof: |c| sent_to(c, UDP_SLOTS),
        },
        Path {
            name: "new_flow_udp",
            bytes: udp,
            vary: true,
            floor: false,
            action: XDP_REDIRECT,
            proof: |c| c.get(GlobalCounter::FlowInserts),
        },
        Path {
            name: "non_vip_udp",
            bytes: udp4_frame(UDP_NON_VIP, BENCH_FRAME_LEN),
            vary: false,
            floor: false,
            action: XDP_PASS,
            proof: |c| c.get(GlobalCounter::Passed),
        },
    ];
    let cpus = nr_cpus().map_err(|(_, e)| e)?;
    let mut medians = Vec::new();
    println!(
        "dataplane bench: repeat={repeat} runs={runs} flow_table={flow_table} ring={ring_size} cpus={cpus}"
    );
    for path in &paths {
        let mut bytes = [0u8; BENCH_FRAME_MAX];
        bytes[..path.bytes.len()].copy_from_slice(&path.bytes);
        let value = BenchFrame {
            vary_source: path.vary as u64,
            len: path.bytes.len() as u64,
            bytes,
        };
        let md = xdp_md(path.bytes.len(), ns.in_ifindex);
        frames.set(0, PerCpuValues::try_from(vec![value; cpus])?, 0)?;
        let fd = match (path.floor, path.name) {
            (true, _) => &floor_fd,
            (false, "new_flow_capped") => &capped_fd,
            _ => &lb_fd,
        };
        target.set(0, fd, 0)?;
        if matches!(path.name, "new_flow" | "new_flow_v6" | "new_flow_udp") && prefill {
            // Fill the table first, so every measured insert evicts, as a
            // long-running gateway's does.
            let md = xdp_md(path.bytes.len(), ns.in_ifindex);
            let mut bytes = [0u8; BENCH_FRAME_MAX];
            bytes[..path.bytes.len()].copy_from_slice(&path.bytes);
            frames.set(
                0,
                PerCpuValues::try_from(vec![
                    BenchFrame {
                        vary_source: 1,
                        len: path.bytes.len() as u64,
                        bytes,
                    };
                    cpus
                ])?,
                0,
            )?;
            let mut out = vec![0u8; path.bytes.len() + 256];
            restore.test_run(TestRunOptions {
                data_in: Some(&path.bytes),
                data_out: Some(&mut out),
                ctx_in: Some(&md),
                repeat: flow_table + flow_table / 4,
                ..Default::default()
            })?;
        }
        let mut samples = Vec::new();
        for _ in 0..runs {
            let snapshot = reader.read()?;
            let before = (path.proof)(&snapshot);
            let mut out = vec![0u8; path.bytes.len() + 256];
            let res = restore.test_run(TestRunOptions {
                data_in: Some(&path.bytes),
                data_out: Some(&mut out),
                ctx_in: Some(&md),
                repeat,
                ..Default::default()
            })?;
            anyhow::ensure!(
                res.return_value == path.action,
                "{}: action {} (expected {})",
                path.name,
                res.return_value,
                path.action
            );
            if !path.floor {
                let after = reader.read()?;
                let rose = (path.proof)(&after) - before;
                // Which global counters rose instead, by index.
                let moved: Vec<(usize, u64)> = after
                    .global
                    .iter()
                    .zip(&snapshot.global)
                    .enumerate()
                    .filter(|(_, (a, b))| a != b)
                    .map(|(i, (a, b))| (i, a - b))
                    .collect();
                anyhow::ensure!(
                    rose == repeat as u64,
                    "{}: its counter rose by {rose}, not by the repeat count {repeat}: \
                     the iterations did not all take this path (global counters that \
                     moved, by index: {moved:?})",
                    path.name
                );
            }
            samples.push(res.duration.as_nanos() as f64);
        }
        let min = samples.iter().cloned().fold(f64::INFINITY, f64::min);
        let max = samples.iter().cloned().fold(0.0, f64::max);
        let med = median(&mut samples);
        println!(
            "  {:<12} min {:>6.1} ns  median {:>6.1} ns  max {:>6.1} ns  (counter rose by {repeat} per run)",
            path.name, min, med, max
        );
        medians.push((path.name, med, min, max));
    }
    let floor = medians[3].1;
    for (name, med, _, _) in &medians[..3] {
        println!("  {:<12} net of floor: {:>6.1} ns", name, med - floor);
    }
    // Capacity under skew: every insert above came from this one CPU (the
    // per-CPU LRU measured before held about flow_table / CPUs of them).
    let flows = xdplb::dataplane::FlowTable::open(pin_path)?;
    let held = flows.occupied().count();
    println!(
        "  flow table holds {held} of {} entries after inserts from one CPU",
        flows.capacity()
    );
    let median_of = |name: &str| {
        medians
            .iter()
            .find(|m| m.0 == name)
            .map_or(f64::NAN, |m| m.1)
    };
    println!(
        "  completing a partial checksum: {:.1} ns at {BENCH_FRAME_LEN} bytes, {:.1} ns at {FULL_FRAME_LEN} bytes",
        median_of("established_partial") - median_of("established"),
        median_of("established_1500_partial") - median_of("established_1500"),
    );
    println!(
        "dataplane: established_ns={:.0} new_flow_ns={:.0} non_vip_ns={:.0} floor_ns={:.0}",
        medians[0].1, medians[1].1, medians[2].1, floor
    );
    Ok(())
}
