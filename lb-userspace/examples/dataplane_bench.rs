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
//! The `_full` paths are established flows as a gateway sees them: the
//! table holds `--full-flows` live flows (default half the table, at
//! most 1,000,000), put there by the program itself from their SYNs, and
//! each iteration is the next of them, so each lookup touches memory the
//! previous ones did not. A flow that was not found counts as a miss and
//! fails the proof.
//!
//! `--only PATH,PATH` runs those paths (and the floor) alone.
//!
//! `--peer OBJECT` also loads Katran's balancer (`peer/katran.rs`; built
//! outside this repository, see docs/BENCHMARKS.md) and times it through
//! the same wrapper on the same frames, its runs alternating with
//! xdplb's, each proven by Katran's own stats; lines `katran PATH …` and
//! `ratio PATH …` (xdplb / Katran, net of the floor).
//!
//! `--peer-over-cap` says the peer was built with Katran's stock insert
//! cap (MAX_CONN_RATE): its new-flow lines are then its SYN over the cap
//! (proven by the last flow *not* being in its LRU), and their ratios are
//! taken against xdplb's `new_flow_capped`.
//!
//! The process runs pinned to one CPU: Katran's connection table is per
//! CPU, and every insert and lookup must meet the same one.
//!
//! Usage: dataplane_bench [--repeat N] [--runs N] [--flow-table N] [--prefill 0|1]
//!                        [--full-flows N] [--peer OBJECT [--peer-over-cap]]
#[path = "../tests/common/mod.rs"]
mod common;
#[path = "peer/katran.rs"]
mod katran;

use std::net::{SocketAddr, SocketAddrV4, SocketAddrV6};

use aya::{
    maps::{Array, MapData, PerCpuArray, PerCpuValues, ProgramArray},
    programs::{ProgramFd, TestRun, TestRunOptions, Xdp},
    util::nr_cpus,
    EbpfLoader,
};
use common::{backend_mac, xdp_md, TestNs, CLIENT_MAC, IN_MAC};
use katran::Katran;
use lb_common::{
    bench::{BenchFrame, BENCH_FRAME_LEN, BENCH_FRAME_MAX, VARY_UNBOUNDED},
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

/// How Katran's run of a path is proven, by Katran's own `stats` map.
#[derive(Clone, Copy, Debug)]
enum KatranProof {
    /// Every packet of the VIP found its flow in the CPU's LRU: LRU_CNTRS
    /// v1 (VIP packets) minus v2 (LRU misses).
    Hits,
    /// Every packet missed the LRU and was balanced by the ring: LRU_CNTRS
    /// v2. (That it was also inserted, the cap lifted, is checked after
    /// the runs: the last flow must be in the LRU.)
    Misses,
    /// Every packet passed to the kernel: XDP_PASS_CNTR v1.
    Passed,
}

impl KatranProof {
    fn read(self, k: &Katran) -> anyhow::Result<u64> {
        Ok(match self {
            KatranProof::Hits => {
                let s = k.stat(katran::LRU_CNTRS)?;
                s.v1.wrapping_sub(s.v2)
            }
            KatranProof::Misses => k.stat(katran::LRU_CNTRS)?.v2,
            KatranProof::Passed => k.stat(katran::XDP_PASS_CNTR)?.v1,
        })
    }

    /// Katran's verdict on the path: encapsulated and sent back out, or
    /// passed.
    fn action(self) -> u32 {
        match self {
            KatranProof::Passed => XDP_PASS,
            _ => XDP_TX,
        }
    }
}

struct Path {
    name: &'static str,
    bytes: Vec<u8>,
    /// `BenchFrame::vary_period`: 0 (one flow), `VARY_UNBOUNDED` (a new
    /// flow each iteration) or the flows of a `_full` path in turn.
    period: u64,
    /// Sent through the wrapper before the timed runs, `period` times
    /// over the same sources (once when 0): puts the path's flows in the
    /// table.
    warm: Option<Vec<u8>>,
    /// Fill the flow table with other flows first (new-flow paths), so
    /// every measured insert evicts, as a long-running gateway's does.
    prefill: bool,
    /// Keep the tables as the previous path left them instead of
    /// emptying them first (`new_flow_capped`: the full table `new_flow`
    /// leaves, which its capped program could not fill itself).
    keep_tables: bool,
    floor: bool,
    action: u32,
    /// The counter that must rise by the repeat count.
    proof: fn(&Counters) -> u64,
    /// Katran's run of the same frames, when `--peer` loaded it.
    katran: Option<KatranProof>,
}

/// Non-SYN packets that found no flow entry (see the `_full` paths).
fn misses(c: &Counters) -> u64 {
    c.get(GlobalCounter::FlowMisses)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// The wrapper (`bench_restore`) and its maps.
struct Harness<'a> {
    restore: &'a Xdp,
    target: ProgramArray<MapData>,
    frames: PerCpuArray<MapData, BenchFrame>,
    seq: Array<MapData, u32>,
    cpus: usize,
    ifindex: u32,
}

impl Harness<'_> {
    /// Points the wrapper at `prog` and `bytes`, varied over `period`
    /// sources; a finite period starts its cycle again from the first.
    fn set(&mut self, prog: &ProgramFd, bytes: &[u8], period: u64) -> anyhow::Result<()> {
        self.target.set(0, prog, 0)?;
        let mut frame = [0u8; BENCH_FRAME_MAX];
        frame[..bytes.len()].copy_from_slice(bytes);
        let value = BenchFrame {
            vary_period: period,
            len: bytes.len() as u64,
            bytes: frame,
        };
        self.frames
            .set(0, PerCpuValues::try_from(vec![value; self.cpus])?, 0)?;
        if period != 0 && period != VARY_UNBOUNDED {
            self.seq.set(0, 0, 0)?;
        }
        Ok(())
    }

    /// `repeat` iterations: the verdict and the ns per iteration.
    fn run(&self, bytes: &[u8], repeat: u32) -> anyhow::Result<(u32, f64)> {
        let md = xdp_md(bytes.len(), self.ifindex);
        let mut out = vec![0u8; bytes.len() + 256];
        let res = self.restore.test_run(TestRunOptions {
            data_in: Some(bytes),
            data_out: Some(&mut out),
            ctx_in: Some(&md),
            repeat,
            ..Default::default()
        })?;
        Ok((res.return_value, res.duration.as_nanos() as f64))
    }
}

/// `bytes` as the wrapper varies it for sequence number `s` (see
/// `lb-ebpf/src/bench.rs`).
fn varied(bytes: &[u8], s: u32) -> Vec<u8> {
    let mut b = bytes.to_vec();
    b[34..36].copy_from_slice(&(s as u16).to_be_bytes());
    b[28..30].copy_from_slice(&(((s >> 16) as u16) | 0x8000).to_be_bytes());
    b
}

/// Per-path medians: (name, median, min, max) of xdplb and of Katran.
struct Line {
    name: &'static str,
    median: f64,
    min: f64,
    max: f64,
}

fn line(name: &'static str, samples: &mut [f64]) -> Line {
    let min = samples.iter().cloned().fold(f64::INFINITY, f64::min);
    let max = samples.iter().cloned().fold(0.0, f64::max);
    Line {
        name,
        median: median(samples),
        min,
        max,
    }
}

/// Pins this process to one CPU: every insert then lands in the same
/// per-CPU state (Katran's LRU of that CPU), and runs do not migrate.
fn pin_to_cpu(cpu: usize) -> anyhow::Result<()> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; the calls only read
    // and write it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            anyhow::bail!(
                "sched_setaffinity to CPU {cpu}: {}",
                std::io::Error::last_os_error()
            );
        }
    }
    Ok(())
}

/// Kernel figures of a loaded program: instructions the verifier
/// processed, instructions after the verifier's rewrites, JITed bytes.
fn program_line(name: &str, prog: &Xdp) -> anyhow::Result<()> {
    let info = prog.info()?;
    println!(
        "  program {name} verified_insns {} xlated_insns {} jited_bytes {}",
        info.verified_instruction_count()
            .map_or("-".to_string(), |n| n.to_string()),
        info.size_translated()
            .map_or("-".to_string(), |n| (n / 8).to_string()),
        info.size_jitted()
    );
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let repeat = arg(&args, "--repeat", 1_000_000) as u32;
    let runs = arg(&args, "--runs", 5) as usize;
    let flow_table = arg(&args, "--flow-table", 1_048_576) as u32;
    let prefill = arg(&args, "--prefill", 1) != 0;
    let full_flows = arg(
        &args,
        "--full-flows",
        // Half the table: xdplb's table (two 8-way buckets a flow) loses
        // some of the flows inserted into it empty from 5/8 on (1k table:
        // 307 misses a million iterations; 1M table at 3/4: 10 of
        // 786,432 flows), and the proof wants every one found.
        (u64::from(flow_table) / 2).min(1_000_000),
    ) as u32;
    anyhow::ensure!(full_flows > 0, "--full-flows must be at least 1");
    let peer = args
        .iter()
        .position(|a| a == "--peer")
        .map(|i| args.get(i + 1).map(std::path::PathBuf::from))
        .map(|p| {
            p.ok_or_else(|| anyhow::anyhow!("--peer needs the path of Katran's balancer.bpf.o"))
        })
        .transpose()?;
    let over_cap = args.iter().any(|a| a == "--peer-over-cap");
    // `--only a,b`: those paths (and the floor) alone, for quick A/B runs
    // of two builds with many rounds.
    let only: Vec<String> = args
        .iter()
        .position(|a| a == "--only")
        .and_then(|i| args.get(i + 1))
        .map(|v| v.split(',').map(str::to_string).collect())
        .unwrap_or_default();
    let cpus = nr_cpus().map_err(|(_, e)| e)?;
    let pinned_cpu = cpus - 1;
    pin_to_cpu(pinned_cpu)?;
    let ns = TestNs::new(3);
    let pin_path =
        std::path::PathBuf::from(format!("/sys/fs/bpf/xdplb-bench-{}", std::process::id()));
    let result = run(
        &ns,
        &pin_path,
        Options {
            repeat,
            runs,
            flow_table,
            prefill,
            full_flows,
            peer: peer.as_deref(),
            over_cap,
            pinned_cpu,
            only: &only,
        },
    );
    let _ = dataplane::down(&pin_path);
    result
}

struct Options<'a> {
    repeat: u32,
    runs: usize,
    flow_table: u32,
    prefill: bool,
    full_flows: u32,
    peer: Option<&'a std::path::Path>,
    /// The peer keeps its stock insert cap (`--peer-over-cap`).
    over_cap: bool,
    pinned_cpu: usize,
    /// The paths to run (`--only`; empty: all).
    only: &'a [String],
}

fn run(ns: &TestNs, pin_path: &std::path::Path, opts: Options) -> anyhow::Result<()> {
    let Options {
        repeat,
        runs,
        flow_table,
        prefill,
        full_flows,
        peer,
        over_cap,
        pinned_cpu,
        only,
    } = opts;
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
            tunnel_source_v4: Some("198.18.1.1/32".parse()?),
            tunnel_source_v6: None,
            ..Default::default()
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
    let cpus = nr_cpus().map_err(|(_, e)| e)?;
    let target = ProgramArray::try_from(bench.take_map("TARGET").expect("TARGET"))?;
    let frames = PerCpuArray::try_from(bench.take_map("FRAME").expect("FRAME"))?;
    let seq = Array::try_from(bench.take_map("SEQ").expect("SEQ"))?;
    let restore: &Xdp = bench.program("bench_restore").unwrap().try_into()?;
    let mut harness = Harness {
        restore,
        target,
        frames,
        seq,
        cpus,
        ifindex: ns.in_ifindex,
    };
    let reader = CounterReader::open(pin_path)?;

    let established = frame(VIP, TCP_ACK);
    let syn = frame(VIP, TCP_SYN);
    let dsr = frame(DSR_VIP, TCP_ACK);
    let tunnel = frame(TUNNEL_VIP, TCP_ACK);
    let full = tcp_frame(VIP, TCP_ACK, FULL_FRAME_LEN).build();
    let established_v6 = tcp6_frame(V6_CLIENT, V6_VIP, TCP_ACK, V6_FRAME_LEN);
    let syn_v6 = tcp6_frame(V6_CLIENT, V6_VIP, TCP_SYN, V6_FRAME_LEN);
    let udp = udp4_frame(UDP_VIP, BENCH_FRAME_LEN);
    let full_period = u64::from(full_flows);

    // Katran, when given: the same VIPs (TCP and UDP over IPv4, TCP over
    // IPv6) and three reals each, its per-CPU LRU of `flow_table` entries.
    // Katran has one way to send (IPIP or IPv6-in-IPv6, XDP_TX), so its
    // figure for a path is what that path costs it.
    let mut peer = match peer {
        None => None,
        Some(object) => {
            let reals4: Vec<std::net::IpAddr> = (0..3)
                .map(|i| format!("198.18.1.{}", 11 + i).parse().unwrap())
                .collect();
            let reals6: Vec<std::net::IpAddr> = (0..3)
                .map(|i| format!("2001:2:0:1::{}", 11 + i).parse().unwrap())
                .collect();
            let vips = [
                katran::Vip {
                    num: 0,
                    addr: VIP.parse()?,
                    proto: IPPROTO_TCP,
                    reals: reals4.clone(),
                },
                katran::Vip {
                    num: 1,
                    addr: V6_VIP.parse()?,
                    proto: IPPROTO_TCP,
                    reals: reals6,
                },
                katran::Vip {
                    num: 2,
                    addr: UDP_VIP.parse()?,
                    proto: IPPROTO_UDP,
                    reals: reals4.clone(),
                },
                // xdplb's tunnel pool's VIP: Katran's one path (IPIP) on
                // the same frames as `established_tunnel`.
                katran::Vip {
                    num: 3,
                    addr: TUNNEL_VIP.parse()?,
                    proto: IPPROTO_TCP,
                    reals: reals4,
                },
            ];
            let k = Katran::load(object, flow_table, backend_mac(0), &vips)?;
            let fd = k.program()?.fd()?.try_clone()?;
            Some((k, fd))
        }
    };

    // Each path: xdplb's frame, what puts its flows in the table, its
    // proof; and Katran's proof where Katran runs the same frame.
    let fixed = |name, bytes: Vec<u8>, warm: Option<Vec<u8>>, action, proof, katran| Path {
        name,
        bytes,
        period: 0,
        warm,
        prefill: false,
        keep_tables: false,
        floor: false,
        action,
        proof,
        katran,
    };
    let new_flow = |name, bytes: Vec<u8>, proof, katran| Path {
        name,
        bytes,
        period: VARY_UNBOUNDED,
        warm: None,
        prefill,
        keep_tables: false,
        floor: false,
        action: XDP_REDIRECT,
        proof,
        katran,
    };
    // Every iteration a different one of `full_flows` flows put in the
    // table just before (the warm-up's SYNs, over the same sources): each
    // lookup misses the cache as on a busy gateway. A flow missing from
    // the table would count in FlowMisses, which the proof subtracts.
    let full_path = |name, bytes: Vec<u8>, warm: Vec<u8>, proof, katran| Path {
        name,
        bytes,
        period: full_period,
        warm: Some(warm),
        prefill: false,
        keep_tables: false,
        floor: false,
        action: XDP_REDIRECT,
        proof,
        katran,
    };
    let floor = |name, bytes: Vec<u8>| Path {
        name,
        bytes,
        period: 0,
        warm: None,
        prefill: false,
        keep_tables: false,
        floor: true,
        action: XDP_TX,
        proof: |_| 0,
        katran: None,
    };
    let paths = [
        // First, on a table that holds only the seeded flows: the
        // new-flow paths' prefills would leave it full of others.
        full_path(
            "established_full",
            established.clone(),
            syn.clone(),
            |c| c.vips[0].counters.packets.wrapping_sub(misses(c)),
            Some(KatranProof::Hits),
        ),
        full_path(
            "established_full_tunnel",
            tunnel.clone(),
            frame(TUNNEL_VIP, TCP_SYN),
            |c| c.get(GlobalCounter::TunnelSent).wrapping_sub(misses(c)),
            // Katran's established path is its IPIP one.
            Some(KatranProof::Hits),
        ),
        full_path(
            "established_full_v6",
            established_v6.clone(),
            syn_v6.clone(),
            |c| sent_to(c, V6_SLOTS).wrapping_sub(misses(c)),
            Some(KatranProof::Hits),
        ),
        fixed(
            "established",
            established.clone(),
            Some(syn.clone()),
            XDP_REDIRECT,
            |c| c.vips[0].counters.packets,
            Some(KatranProof::Hits),
        ),
        new_flow(
            "new_flow",
            syn.clone(),
            |c| c.get(GlobalCounter::FlowInserts),
            Some(KatranProof::Misses),
        ),
        // Right after `new_flow`, in the table it filled: each iteration
        // is either capped or (once a second) inserted.
        Path {
            name: "new_flow_capped",
            prefill: false,
            keep_tables: true,
            ..new_flow(
                "new_flow_capped",
                syn.clone(),
                |c| c.get(GlobalCounter::FlowInsertsCapped) + c.get(GlobalCounter::FlowInserts),
                None,
            )
        },
        fixed(
            "non_vip",
            frame("198.18.2.99:80", TCP_ACK),
            None,
            XDP_PASS,
            |c| c.get(GlobalCounter::Passed),
            Some(KatranProof::Passed),
        ),
        floor("floor", established.clone()),
        // Completing a partial checksum: the same established flow, with
        // the checksum left as an offloading sender leaves it; compared
        // with the complete frame of the same size.
        fixed(
            "established_partial",
            partial(VIP, TCP_ACK, BENCH_FRAME_LEN),
            Some(syn.clone()),
            XDP_REDIRECT,
            |c| c.get(GlobalCounter::PartialChecksum),
            None,
        ),
        fixed(
            "established_1500",
            full.clone(),
            Some(syn.clone()),
            XDP_REDIRECT,
            |c| c.vips[0].counters.packets,
            None,
        ),
        fixed(
            "established_1500_partial",
            partial(VIP, TCP_ACK, FULL_FRAME_LEN),
            Some(syn.clone()),
            XDP_REDIRECT,
            |c| c.get(GlobalCounter::PartialChecksum),
            None,
        ),
        // Direct server return, established: the MAC rewrite alone, and the
        // IPIP encapsulation.
        fixed(
            "established_dsr",
            dsr,
            Some(frame(DSR_VIP, TCP_SYN)),
            XDP_REDIRECT,
            |c| c.get(GlobalCounter::DsrSent),
            None,
        ),
        fixed(
            "established_tunnel",
            tunnel,
            Some(frame(TUNNEL_VIP, TCP_SYN)),
            XDP_REDIRECT,
            |c| c.get(GlobalCounter::TunnelSent),
            Some(KatranProof::Hits),
        ),
        floor("floor_1500", full),
        // IPv6 TCP (NAT66): established, new flow, not a VIP.
        fixed(
            "established_v6",
            established_v6,
            Some(syn_v6.clone()),
            XDP_REDIRECT,
            |c| sent_to(c, V6_SLOTS),
            Some(KatranProof::Hits),
        ),
        new_flow(
            "new_flow_v6",
            syn_v6,
            |c| c.get(GlobalCounter::FlowInserts),
            Some(KatranProof::Misses),
        ),
        fixed(
            "non_vip_v6",
            tcp6_frame(V6_CLIENT, V6_NON_VIP, TCP_ACK, V6_FRAME_LEN),
            None,
            XDP_PASS,
            |c| c.get(GlobalCounter::Passed),
            Some(KatranProof::Passed),
        ),
        // IPv4 UDP: established (the flow's first datagram put it in the
        // table), new flow (each datagram from a new source), not a VIP.
        fixed(
            "established_udp",
            udp.clone(),
            Some(udp.clone()),
            XDP_REDIRECT,
            |c| sent_to(c, UDP_SLOTS),
            Some(KatranProof::Hits),
        ),
        new_flow(
            "new_flow_udp",
            udp,
            |c| c.get(GlobalCounter::FlowInserts),
            Some(KatranProof::Misses),
        ),
        fixed(
            "non_vip_udp",
            udp4_frame(UDP_NON_VIP, BENCH_FRAME_LEN),
            None,
            XDP_PASS,
            |c| c.get(GlobalCounter::Passed),
            Some(KatranProof::Passed),
        ),
    ];
    println!(
        "dataplane bench: repeat={repeat} runs={runs} flow_table={flow_table} ring={ring_size} cpus={cpus} full_flows={full_flows} peer={}",
        peer.as_ref().map_or("none", |_| "katran")
    );
    let flows = xdplb::dataplane::FlowTable::open(pin_path)?;
    let mut ours = Vec::new();
    let mut theirs = Vec::new();
    let mut held_after_new_flow = None;
    for path in &paths {
        if !only.is_empty() && !path.floor && !only.iter().any(|n| n == path.name) {
            continue;
        }
        let full = path.period != 0 && path.period != VARY_UNBOUNDED;
        // Every path starts from empty tables: a `_full` path's flows are
        // not crowded out by the previous one's, and a one-flow path's
        // flow sits in the first bucket xdplb scans, whatever ran before
        // (in a half-full table it lands in either of its two buckets, and
        // in the second costs a second scan on every packet: the `_full`
        // paths show that mix).
        if !path.floor && !path.keep_tables {
            for (i, slot) in flows.occupied().collect::<Vec<_>>() {
                flows.clear(i, slot.tag);
            }
            anyhow::ensure!(
                flows.occupied().next().is_none(),
                "{}: the flow table did not empty",
                path.name
            );
            if let Some((k, _)) = &mut peer {
                k.fresh_lrus()?;
            }
        }
        // (who, program, action, proof): xdplb, then Katran where it runs
        // this path; their timed runs alternate.
        let lb = match (path.floor, path.name) {
            (true, _) => &floor_fd,
            (false, "new_flow_capped") => &capped_fd,
            _ => &lb_fd,
        };
        let mut targets: Vec<(bool, &ProgramFd, u32)> = vec![(false, lb, path.action)];
        // A peer over its stock cap inserts almost nothing: it runs only
        // where it must not insert (its new flows over the cap).
        let peer_runs = path.katran.is_some()
            && (!over_cap || matches!(path.katran, Some(KatranProof::Misses)));
        if let (Some((_, kfd)), Some(kp), true) = (&peer, path.katran, peer_runs) {
            targets.push((true, kfd, kp.action()));
        }
        let read = |is_peer: bool| -> anyhow::Result<u64> {
            match (is_peer, &peer, path.katran) {
                (true, Some((k, _)), Some(kp)) => kp.read(k),
                _ => Ok((path.proof)(&reader.read()?)),
            }
        };
        for &(is_peer, fd, action) in &targets {
            let who = if is_peer { "katran" } else { "xdplb" };
            if path.prefill {
                harness.set(fd, &path.bytes, VARY_UNBOUNDED)?;
                harness.run(&path.bytes, flow_table + flow_table / 4)?;
            }
            if let Some(warm) = &path.warm {
                harness.set(fd, warm, path.period)?;
                let (got, _) = harness.run(warm, path.period.max(1) as u32)?;
                anyhow::ensure!(
                    got == action,
                    "{who} {}: the warm-up frame got action {got} (expected {action}): \
                     does this data plane balance this VIP?",
                    path.name
                );
            }
        }
        let mut samples = vec![Vec::new(); targets.len()];
        for _ in 0..runs {
            for (i, &(is_peer, fd, action)) in targets.iter().enumerate() {
                let who = if is_peer { "katran" } else { "xdplb" };
                harness.set(fd, &path.bytes, path.period)?;
                let before = if path.floor { 0 } else { read(is_peer)? };
                let snapshot = reader.read()?;
                let (got, ns) = harness.run(&path.bytes, repeat)?;
                anyhow::ensure!(
                    got == action,
                    "{who} {}: action {got} (expected {action})",
                    path.name
                );
                if !path.floor {
                    let rose = read(is_peer)?.wrapping_sub(before);
                    let after = reader.read()?;
                    // Which of xdplb's global counters moved, by index.
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
                        "{who} {}: its proof rose by {rose}, not by the repeat count {repeat}: \
                         the iterations did not all take this path (xdplb's global counters \
                         that moved, by index: {moved:?})",
                        path.name
                    );
                }
                samples[i].push(ns);
            }
        }
        for (&(is_peer, _, _), s) in targets.iter().zip(&mut samples) {
            let l = line(path.name, s);
            if is_peer {
                println!(
                    "  katran {:<12} min {:>6.1} ns  median {:>6.1} ns  max {:>6.1} ns  (its stats rose by {repeat} per run: {:?})",
                    l.name, l.min, l.median, l.max, path.katran.unwrap()
                );
                theirs.push(l);
            } else {
                println!(
                    "  {:<12} min {:>6.1} ns  median {:>6.1} ns  max {:>6.1} ns  (counter rose by {repeat} per run)",
                    l.name, l.min, l.median, l.max
                );
                ours.push(l);
            }
        }
        // Katran's misses are inserts only if its cap was lifted at build
        // time: the last new flow must be in this CPU's LRU.
        if let (Some((k, _)), Some(KatranProof::Misses)) = (&peer, path.katran) {
            let s = harness.seq.get(&0, 0)?;
            let key = katran::flow_key(&varied(&path.bytes, s))?;
            let held = k.lru_holds(pinned_cpu, &key)?;
            anyhow::ensure!(
                held != over_cap,
                "katran {}: the last new flow is {}in the LRU of CPU {pinned_cpu}: \
                 was the object built with its insert cap {} (-DMAX_CONN_RATE)?",
                path.name,
                if held { "" } else { "not " },
                if over_cap { "kept" } else { "lifted" },
            );
        }
        if path.name == "new_flow" {
            held_after_new_flow = Some(flows.occupied().count());
        }
        if full {
            // The new-flow paths' sources go on past the `_full` flows'.
            harness.seq.set(0, full_flows, 0)?;
        }
    }
    let median_of = |name: &str| {
        ours.iter()
            .find(|m| m.name == name)
            .map_or(f64::NAN, |m| m.median)
    };
    let floor = median_of("floor");
    for name in ["established", "new_flow", "non_vip"] {
        println!(
            "  {:<12} net of floor: {:>6.1} ns",
            name,
            median_of(name) - floor
        );
    }
    for l in &theirs {
        // Katran over its cap against xdplb over its own.
        // (xdplb has no capped IPv6 or UDP line to set against those.)
        let name = match l.name {
            "new_flow" if over_cap => "new_flow_capped",
            "new_flow_v6" | "new_flow_udp" if over_cap => continue,
            name => name,
        };
        let ours_net = median_of(name) - floor;
        let theirs_net = l.median - floor;
        println!(
            "  ratio {:<12} xdplb {:>6.1} ns / katran {:>6.1} ns net = {:.2}",
            name,
            ours_net,
            theirs_net,
            ours_net / theirs_net
        );
    }
    // What the kernel made of each program.
    program_line("xdplb", dp.program())?;
    for (name, count) in dp.verified_instructions() {
        println!(
            "  verified {name} {}",
            count.map_or("-".to_string(), |n| n.to_string())
        );
    }
    if let Some((k, _)) = &peer {
        program_line("katran", k.program()?)?;
    }
    // Capacity under skew: every insert of `new_flow` came from this one
    // CPU (the per-CPU LRU measured before held about flow_table / CPUs
    // of them).
    let held = held_after_new_flow.unwrap_or(0);
    println!(
        "  flow table holds {held} of {} entries after inserts from one CPU",
        flows.capacity()
    );
    println!(
        "  completing a partial checksum: {:.1} ns at {BENCH_FRAME_LEN} bytes, {:.1} ns at {FULL_FRAME_LEN} bytes",
        median_of("established_partial") - median_of("established"),
        median_of("established_1500_partial") - median_of("established_1500"),
    );
    println!(
        "dataplane: established_ns={:.0} new_flow_ns={:.0} non_vip_ns={:.0} floor_ns={:.0}",
        median_of("established"),
        median_of("new_flow"),
        median_of("non_vip"),
        floor
    );
    Ok(())
}
