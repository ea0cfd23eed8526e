//! Bulk download through the gateway in NAT, dsr and tunnel mode, side by
//! side, with what the gateway pays per GB — on a direct-return lab
//! ([`LabBuilder::direct_return`](xdplb_tests::LabBuilder::direct_return)):
//!
//! ```text
//!  client ── rt ── gw (xdplb) ── br0 ── b1 (iperf3 -s, VIP on lo, decap for tunnel)
//!             └──── rtb ─────────┘
//! ```
//!
//! | path     | requests                 | replies (the download)        |
//! |----------|--------------------------|-------------------------------|
//! | `nat`    | client → rt → gw → b1    | b1 → gw → rt → client         |
//! | `dsr`    | client → rt → gw → b1    | b1 → rt → client              |
//! | `tunnel` | client → rt → gw ⇒ b1    | b1 → rt → client              |
//! | `none`   | client → rt → b1         | b1 → rt → client (no gateway) |
//!
//! `iperf3 -R` (the backend sends) runs for a fixed time through the VIP.
//! The router forwards every reply in all four paths, the client and the
//! backend do the same work, so what differs between rows is the
//! gateway's: the **gateway's CPU per GB** is the machine's busy CPU per GB
//! (idle baseline subtracted) less that of `none`, measured in the same
//! round. The gateway's own XDP packet counter and the bytes its
//! interfaces received say how much of the download it touched.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use serde_json::{json, Value};
use xdplb_tests::{
    addr::{BACKEND_IF, GW_BACKEND_ADDR, GW_BACKEND_IF, GW_CLIENT_IF, ROUTER_BACKEND_ADDR},
    deploy::{render_config_with, DataplaneSpec, Deployment, PoolSpec},
    wait_until, Lab,
};

use crate::sys::{self, MachineCpu};

/// iperf3's port, on b1 and on the VIP.
const PORT: u16 = 5201;
/// How long a path gets to start carrying the VIP.
const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// Seconds iperf3 may overrun before `timeout` kills it.
const TOOL_GRACE_S: u64 = 30;
/// Quiet time measured before each round to subtract the idle machine.
const BASELINE: Duration = Duration::from_secs(2);

/// The paths compared, in the order each round runs them.
pub const PATHS: [&str; 4] = ["none", "nat", "dsr", "tunnel"];

pub struct BulkOpts {
    pub rounds: usize,
    pub secs: u64,
}

fn vip() -> SocketAddr {
    SocketAddr::from((Lab::vip(1), PORT))
}

/// The pool for `mode`: b1's iperf3, probed rarely over TCP (iperf3 logs
/// every connection without its cookie as an error).
fn pool(mode: &str) -> PoolSpec {
    let mut p = PoolSpec::new(1, 0);
    p.name = "bulk".into();
    p.vip = std::net::SocketAddrV4::new(Lab::vip(1), PORT);
    p.backend_port = PORT;
    p.tcp_health = true;
    p.interval_ms = 5000;
    p.timeout_ms = 1000;
    p.rise = 1;
    p.fall = 3;
    p.min_active = 1;
    if mode != "nat" {
        p.mode = Some(mode.to_string());
    }
    p
}

/// Runs the comparison on a lab of its own.
pub fn run(o: &BulkOpts) -> Result<Value> {
    let mut d = Deployment::configured(
        Lab::builder().direct_return(true).backends(1),
        Vec::new(),
        DataplaneSpec::default(),
    )?;
    d.lab.vip_on_loopback(0, Lab::vip(1))?;
    let iperf = d
        .lab
        .spawn("b1", &["iperf3", "-s", "-p", &PORT.to_string()])?;
    let up = wait_until(READY_TIMEOUT, Duration::from_millis(50), || {
        d.lab
            .exec_ok("b1", &["ss", "-Hltn", &format!("sport = :{PORT}")])
            .is_ok_and(|o| !o.trim().is_empty())
    });
    ensure!(up, "iperf3 -s did not come up: {}", iperf.log());
    let mut runs = Vec::new();
    let mut baselines = Vec::new();
    for round in 0..o.rounds {
        let idle = baseline()?;
        baselines.push(idle);
        println!(
            "bulk: round {}/{} (idle machine {idle:.3} CPU-s/s)",
            round + 1,
            o.rounds
        );
        for path in PATHS {
            let mut row = match one(&mut d, path, o, idle) {
                Ok(v) => v,
                Err(e) => {
                    println!("  {path:<7} failed: {e:#}");
                    json!({ "error": format!("{e:#}") })
                }
            };
            row["path"] = json!(path);
            row["round"] = json!(round);
            runs.push(row);
        }
    }
    drop(iperf);
    Ok(json!({
        "rounds": o.rounds,
        "secs": o.secs,
        "idle_busy_per_s": baselines,
        "runs": runs,
    }))
}

/// Busy CPU-seconds per second of the machine while nothing runs.
fn baseline() -> Result<f64> {
    let m0 = MachineCpu::now()?;
    let t0 = Instant::now();
    std::thread::sleep(BASELINE);
    let m = MachineCpu::now()?.since(m0);
    Ok(m.busy / t0.elapsed().as_secs_f64())
}

/// One path set up; dropping it takes it down again.
struct Path<'a> {
    d: &'a mut Deployment,
    path: &'static str,
}

impl<'a> Path<'a> {
    fn up(d: &'a mut Deployment, path: &'static str) -> Result<Path<'a>> {
        let p = Path { d, path };
        let lab = &p.d.lab;
        // NAT replies must go back through the gateway; direct ones not.
        let via = if path == "nat" {
            GW_BACKEND_ADDR
        } else {
            ROUTER_BACKEND_ADDR
        };
        lab.exec_ok(
            "b1",
            &["ip", "route", "replace", "default", "via", &via.to_string()],
        )?;
        match path {
            "none" => {
                let host = format!("{}/32", Lab::vip(1));
                let b1 = Lab::backend_addr(0).to_string();
                lab.exec_ok("rt", &["ip", "route", "replace", &host, "via", &b1])?;
            }
            mode => {
                if mode == "tunnel" {
                    p.d.decap_up(0, BACKEND_IF)?;
                }
                let dp = if mode == "tunnel" {
                    DataplaneSpec::tunnel()
                } else {
                    DataplaneSpec::default()
                };
                let pools = vec![pool(mode)];
                std::fs::write(&p.d.config_path, render_config_with(lab, &dp, &pools))?;
                p.d.pools = pools;
                p.d.start_daemon()?;
                let active = wait_until(READY_TIMEOUT, Duration::from_millis(100), || {
                    p.d.backend_status("bulk", "web-1")
                        .is_ok_and(|b| b["state"] == "active")
                });
                ensure!(active, "b1 never became active: {}", p.d.daemon_log());
            }
        }
        let lab = &p.d.lab;
        let ready = wait_until(READY_TIMEOUT, Duration::from_millis(50), || {
            lab.run_in("client", || {
                std::net::TcpStream::connect_timeout(&vip(), Duration::from_secs(1)).is_ok()
            })
            .unwrap_or(false)
        });
        ensure!(ready, "{path}: nothing answers on {}", vip());
        Ok(p)
    }

    fn teardown(&mut self) -> Result<()> {
        match self.path {
            "none" => {
                let host = format!("{}/32", Lab::vip(1));
                self.d.lab.exec_ok("rt", &["ip", "route", "del", &host])?;
            }
            mode => {
                let stopped = if self.d.daemon.is_some() {
                    self.d.stop_daemon()
                } else {
                    Ok(())
                };
                let out =
                    self.d
                        .xdplb(&["down", "--config", &self.d.config_path.to_string_lossy()])?;
                stopped?;
                ensure!(
                    out.status.success(),
                    "xdplb down: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                if mode == "tunnel" {
                    self.d.decap(0, &["--down", "--interface", BACKEND_IF])?;
                }
            }
        }
        Ok(())
    }
}

impl Drop for Path<'_> {
    fn drop(&mut self) {
        if let Err(e) = self.teardown() {
            eprintln!("bulk: teardown of {}: {e:#}", self.path);
        }
    }
}

/// Bytes the gateway's interfaces have received so far (both sides).
fn gateway_rx(lab: &Lab) -> Result<u64> {
    let (c, _) = lab.link_bytes("gw", GW_CLIENT_IF)?;
    let (b, _) = lab.link_bytes("gw", GW_BACKEND_IF)?;
    Ok(c + b)
}

fn one(d: &mut Deployment, path: &'static str, o: &BulkOpts, idle_rate: f64) -> Result<Value> {
    let p = Path::up(d, path)?;
    let xdp_rx = |d: &Deployment| -> Option<u64> {
        d.daemon.as_ref()?;
        d.stats().ok()?["global"]["rx_packets"].as_u64()
    };
    let x0 = xdp_rx(p.d);
    let g0 = gateway_rx(&p.d.lab)?;
    let m0 = MachineCpu::now()?;
    let t0 = Instant::now();
    let out = p.d.lab.exec(
        "client",
        &[
            "timeout",
            "-k",
            "5",
            &(o.secs + TOOL_GRACE_S).to_string(),
            "iperf3",
            "--connect-timeout",
            "3000",
            "-R",
            "-c",
            &vip().ip().to_string(),
            "-p",
            &PORT.to_string(),
            "-t",
            &o.secs.to_string(),
            "-J",
        ],
    )?;
    let wall = t0.elapsed().as_secs_f64();
    let m = MachineCpu::now()?.since(m0);
    let gw_rx = gateway_rx(&p.d.lab)? - g0;
    let xdp_packets = x0.zip(xdp_rx(p.d)).map(|(a, b)| b.saturating_sub(a));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let bps = sys::parse_iperf3(&stdout)?;
    let v: Value = serde_json::from_str(&stdout).context("iperf3 -J output")?;
    let bytes = v["end"]["sum_received"]["bytes"]
        .as_f64()
        .context("iperf3 output has no end.sum_received.bytes")?;
    ensure!(bytes > 0.0, "{path}: nothing downloaded");
    let gb = bytes / 1e9;
    let busy_net = m.busy - idle_rate * wall;
    let per_gb = busy_net / gb;
    println!(
        "  {path:<7} {:>6.2} Gbit/s  {:>7.1} MB  machine {per_gb:>6.3} CPU-s/GB (softirq {:.3})  \
         gateway rx {:>7.1} MB/GB  XDP {}",
        bps / 1e9,
        bytes / 1e6,
        m.softirq / gb,
        gw_rx as f64 / 1e6 / gb,
        xdp_packets.map_or("-".into(), |n| format!("{:.0} packets/GB", n as f64 / gb)),
    );
    drop(p);
    Ok(json!({
        "gbps": bps / 1e9,
        "bytes": bytes,
        "wall_s": wall,
        "machine_busy_s": m.busy,
        "machine_softirq_s": m.softirq,
        "idle_busy_per_s": idle_rate,
        "cpu_per_gb_s": per_gb,
        "softirq_per_gb_s": m.softirq / gb,
        "gateway_rx_bytes": gw_rx,
        "gateway_rx_per_gb": gw_rx as f64 / gb,
        "xdp_packets": xdp_packets,
        "xdp_packets_per_gb": xdp_packets.map(|n| n as f64 / gb),
    }))
}
