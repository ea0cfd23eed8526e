//! A private network namespace for running the XDP program under
//! BPF_PROG_TEST_RUN: `bpf_fib_lookup` consults the calling thread's
//! namespace, so each test gets one with the routes and neighbours it
//! expects, and a pin path of its own. Both are removed on drop.
#![allow(dead_code)]

use std::{
    fs::File,
    os::fd::AsRawFd,
    path::PathBuf,
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
};

use xdplb::dataplane::{self, Dataplane, Shape, Tuning};

pub const CLIENT_MAC: [u8; 6] = [0x02, 0xc1, 0, 0, 0, 0x02];
pub const BACKEND_MAC_BASE: [u8; 6] = [0x02, 0xb0, 0, 0, 0, 0x00];
pub const IN_MAC: [u8; 6] = [0x02, 0x9a, 0, 0, 0, 0x01];
pub const OUT_MAC: [u8; 6] = [0x02, 0x9b, 0, 0, 0, 0x01];

static SEQ: AtomicU32 = AtomicU32::new(0);

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

pub fn backend_mac(i: u8) -> [u8; 6] {
    let mut m = BACKEND_MAC_BASE;
    m[5] = 0x10 + i;
    m
}

fn mac_str(m: [u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Removes, once per test process, the namespaces (`xpk<pid>-…`) and pin
/// directories (`xdplb-test-<pid>-…`, `xdplb-decap-test-<pid>-…`) of test
/// processes that no longer run: a killed or aborted test never reaches its
/// `Drop`s. Those of live processes, this one included, are left alone.
fn sweep_stale() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let dead = |name: &str, prefix: &str| -> bool {
            let Some(rest) = name.strip_prefix(prefix) else {
                return false;
            };
            let pid: String = rest.chars().take_while(char::is_ascii_digit).collect();
            !pid.is_empty()
                && pid != std::process::id().to_string()
                && !std::path::Path::new(&format!("/proc/{pid}")).exists()
        };
        if let Ok(entries) = std::fs::read_dir("/var/run/netns") {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if dead(&name, "xpk") {
                    let _ = Command::new("ip").args(["netns", "del", &name]).status();
                }
            }
        }
        if let Ok(entries) = std::fs::read_dir("/sys/fs/bpf") {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if dead(&name, "xdplb-test-") {
                    let _ = dataplane::down(&e.path());
                } else if dead(&name, "xdplb-decap-test-") {
                    let _ = dataplane::decap::remove_pins(&e.path());
                }
            }
        }
    });
}

/// Gateway namespace: `in0` 198.18.0.1/24 and 2001:2::1/64 (client side),
/// `out0` 198.18.1.1/24 and 2001:2:0:1::1/64 (backend side); permanent
/// neighbours for the client 198.18.0.2 / 2001:2::2 and backends
/// 198.18.1.11.. / 2001:2:0:1::11.. (one MAC per backend for both
/// families); forwarding on for both. The calling thread enters it and
/// leaves it on drop.
pub struct TestNs {
    pub name: String,
    pub in_ifindex: u32,
    pub out_ifindex: u32,
    home: File,
}

impl TestNs {
    pub fn new(backends: u8) -> TestNs {
        sweep_stale();
        let n = SEQ.fetch_add(1, Ordering::SeqCst);
        let name = format!("xpk{}-{n}", std::process::id());
        ip(&["netns", "add", &name]);
        let ns = |args: &[&str]| {
            let mut v = vec!["-n", name.as_str()];
            v.extend_from_slice(args);
            ip(&v);
        };
        ns(&["link", "set", "lo", "up"]);
        for (dev, peer, mac, addr, addr6) in [
            ("in0", "in0p", IN_MAC, "198.18.0.1/24", "2001:2::1/64"),
            (
                "out0",
                "out0p",
                OUT_MAC,
                "198.18.1.1/24",
                "2001:2:0:1::1/64",
            ),
        ] {
            ns(&["link", "add", dev, "type", "veth", "peer", "name", peer]);
            ns(&["link", "set", dev, "address", &mac_str(mac)]);
            ns(&["addr", "add", addr, "dev", dev]);
            // nodad: usable at once, not tentative for a second.
            ns(&["-6", "addr", "add", addr6, "dev", dev, "nodad"]);
            ns(&["link", "set", dev, "up"]);
            ns(&["link", "set", peer, "up"]);
        }
        let neigh = |addr: &str, mac: [u8; 6], dev: &str| {
            ns(&[
                "neigh",
                "replace",
                addr,
                "lladdr",
                &mac_str(mac),
                "dev",
                dev,
                "nud",
                "permanent",
            ]);
        };
        neigh("198.18.0.2", CLIENT_MAC, "in0");
        neigh("2001:2::2", CLIENT_MAC, "in0");
        for i in 0..backends {
            neigh(&format!("198.18.1.{}", 11 + i), backend_mac(i), "out0");
            neigh(&format!("2001:2:0:1::{}", 11 + i), backend_mac(i), "out0");
        }
        // VIPs are routed to this gateway by the client; the gateway itself
        // needs no route for them (the program rewrites before routing).
        for setting in ["net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"] {
            let out = Command::new("ip")
                .args(["netns", "exec", &name, "sysctl", "-qw", setting])
                .output()
                .expect("sysctl");
            assert!(out.status.success(), "sysctl {setting}");
        }
        let home = File::open("/proc/thread-self/ns/net").expect("own netns");
        let target = File::open(format!("/var/run/netns/{name}")).expect("netns file");
        // SAFETY: valid fd; setns affects only this thread.
        let rc = unsafe { libc::setns(target.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
        let idx = |dev: &str| {
            std::fs::read_to_string(format!("/sys/class/net/{dev}/ifindex"))
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .unwrap_or_else(|| ifindex_netlink(dev))
        };
        TestNs {
            in_ifindex: idx("in0"),
            out_ifindex: idx("out0"),
            name,
            home,
        }
    }
}

impl TestNs {
    /// Sets `dev`'s MTU (a link narrower than the frames sent to it).
    pub fn set_mtu(&self, dev: &str, mtu: u32) {
        ip(&[
            "-n",
            &self.name,
            "link",
            "set",
            dev,
            "mtu",
            &mtu.to_string(),
        ]);
    }
}

/// /sys shows the namespace sysfs was mounted in, not the thread's; ask
/// the kernel by name instead.
fn ifindex_netlink(dev: &str) -> u32 {
    let c = std::ffi::CString::new(dev).unwrap();
    // SAFETY: valid C string; if_nametoindex resolves in this thread's netns.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    assert!(i != 0, "no interface {dev}");
    i
}

impl Drop for TestNs {
    fn drop(&mut self) {
        // SAFETY: valid fd of our original namespace.
        unsafe { libc::setns(self.home.as_raw_fd(), libc::CLONE_NEWNET) };
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// A data plane loaded under a unique pin path, removed on drop.
pub struct TestPlane {
    pub plane: Option<Dataplane>,
    pub pin_path: PathBuf,
}

impl TestPlane {
    pub fn new(ring_size: u32, flow_table_size: u32) -> TestPlane {
        TestPlane::tuned(ring_size, flow_table_size, Tuning::default())
    }

    pub fn tuned(ring_size: u32, flow_table_size: u32, tuning: Tuning) -> TestPlane {
        let n = SEQ.fetch_add(1, Ordering::SeqCst);
        let pin_path = PathBuf::from(format!("/sys/fs/bpf/xdplb-test-{}-{n}", std::process::id()));
        sweep_stale();
        let plane = match Dataplane::load_tuned(
            Shape {
                pin_path: pin_path.clone(),
                ring_size,
                flow_table_size,
            },
            tuning,
        ) {
            Ok(plane) => plane,
            Err(e) => {
                // A failed load (the verifier refusing a program) may have
                // pinned its maps already.
                let _ = dataplane::down(&pin_path);
                panic!("load data plane: {e:?}");
            }
        };
        TestPlane {
            plane: Some(plane),
            pin_path,
        }
    }

    pub fn dp(&mut self) -> &mut Dataplane {
        self.plane.as_mut().expect("loaded")
    }

    /// Runs the main program once on `frame` arriving on `ifindex` (see
    /// [`run_once`]).
    pub fn run(&mut self, frame: &[u8], ifindex: u32) -> (u32, Vec<u8>) {
        run_once(self.dp().program(), frame, ifindex)
    }

    /// The data plane's counters, summed over CPUs.
    pub fn counters(&self) -> dataplane::Counters {
        dataplane::CounterReader::open(&self.pin_path)
            .unwrap()
            .read()
            .unwrap()
    }
}

impl Drop for TestPlane {
    fn drop(&mut self) {
        self.plane.take();
        let _ = dataplane::down(&self.pin_path);
    }
}

/// `sent` (either family) as a dsr backend `b` must receive it: only the
/// MACs differ.
pub fn expected_dsr(sent: &[u8], b: u32) -> Vec<u8> {
    let mut want = sent.to_vec();
    want[0..6].copy_from_slice(&backend_mac(b as u8));
    want[6..12].copy_from_slice(&OUT_MAC);
    want
}

/// `struct xdp_md` for ctx_in: the frame arrives on `ifindex`.
pub fn xdp_md(len: usize, ifindex: u32) -> [u8; 24] {
    let mut md = [0u8; 24];
    md[4..8].copy_from_slice(&(len as u32).to_ne_bytes());
    md[12..16].copy_from_slice(&ifindex.to_ne_bytes());
    md
}

/// Runs `prog` once (BPF_PROG_TEST_RUN) on `frame` arriving on `ifindex`:
/// its verdict and the frame as it left (room for 256 bytes of growth, an
/// answer or an outer header).
pub fn run_once(prog: &aya::programs::Xdp, frame: &[u8], ifindex: u32) -> (u32, Vec<u8>) {
    use aya::programs::{TestRun, TestRunOptions};
    let md = xdp_md(frame.len(), ifindex);
    let mut out = vec![0u8; frame.len() + 256];
    let res = prog
        .test_run(TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            ctx_in: Some(&md),
            ..Default::default()
        })
        .expect("test_run");
    out.truncate(res.data_size_out as usize);
    (res.return_value, out)
}

/// CLOCK_MONOTONIC_COARSE, which `bpf_ktime_get_coarse_ns` reads: the
/// program stamps flows with it.
pub fn coarse_now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid timespec to write into.
    assert_eq!(
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) },
        0
    );
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The outer sources of the frames the decap tests wrap (the "gateway").
pub const DECAP_GATEWAY: &str = "198.18.1.99";
pub const DECAP_GATEWAY6: &str = "2001:2:0:1::99";
/// The inner destinations the decap tests wrap (the VIPs): addresses of
/// the test namespace, on its lo.
pub const DECAP_VIP: &str = "198.18.2.10";
pub const DECAP_VIP6: &str = "2001:2:0:2::10";

/// `xdplb decap` loaded in a test namespace, its pins removed on drop.
pub struct DecapLab {
    // Field order: program and pins go before the namespace.
    decap: xdplb::dataplane::decap::Decap,
    pin_path: PathBuf,
    pub ns: TestNs,
}

impl DecapLab {
    /// The test namespace plays the backend: its 198.18.1.1 and
    /// 2001:2:0:1::1 are tunnel endpoints, and it holds the VIPs
    /// [`DECAP_VIP`] and [`DECAP_VIP6`] on lo. Tunnels from the gateway
    /// ([`DECAP_GATEWAY`], [`DECAP_GATEWAY6`]) are opened.
    pub fn new() -> DecapLab {
        DecapLab::allowing(&[
            &format!("{DECAP_GATEWAY}/32"),
            &format!("{DECAP_GATEWAY6}/128"),
        ])
    }

    /// As [`DecapLab::new`], opening tunnels from `allow` (CIDRs) only.
    pub fn allowing(allow: &[&str]) -> DecapLab {
        let ns = TestNs::new(1);
        ip(&[
            "-n",
            &ns.name,
            "addr",
            "add",
            &format!("{DECAP_VIP}/32"),
            "dev",
            "lo",
        ]);
        ip(&[
            "-n",
            &ns.name,
            "addr",
            "add",
            &format!("{DECAP_VIP6}/128"),
            "dev",
            "lo",
        ]);
        let pin_path = PathBuf::from(format!(
            "/sys/fs/bpf/xdplb-decap-test-{}-{}",
            std::process::id(),
            ns.name
        ));
        let allow: Vec<ipnet::IpNet> = allow.iter().map(|a| a.parse().unwrap()).collect();
        let decap = xdplb::dataplane::decap::Decap::load(&pin_path, &allow).unwrap();
        DecapLab {
            decap,
            pin_path,
            ns,
        }
    }

    pub fn run(&self, frame: &[u8]) -> (u32, Vec<u8>) {
        run_once(self.decap.program(), frame, self.ns.out_ifindex)
    }

    pub fn counters(&self) -> std::collections::HashMap<&'static str, u64> {
        xdplb::dataplane::decap::counters(&self.pin_path).unwrap()
    }
}

impl Drop for DecapLab {
    fn drop(&mut self) {
        let _ = xdplb::dataplane::decap::remove_pins(&self.pin_path);
    }
}
