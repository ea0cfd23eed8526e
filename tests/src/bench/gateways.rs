//! Four gateways, swapped in turn on the lab's gateway namespace, under the
//! same load: `wrk` with short connections and `iperf3` bulk transfer.
//!
//! | gateway   | what the gateway namespace does                                  |
//! |-----------|------------------------------------------------------------------|
//! | `forward` | plain kernel forwarding; the client targets one backend directly |
//! | `nft`     | nftables DNAT, `numgen inc mod 4` over the four backends         |
//! | `haproxy` | HAProxy `mode tcp` on the VIP (bound on the gateway's loopback)  |
//! | `xdplb`   | `xdplb run` (XDP NAT)                                             |
//!
//! Every backend runs nginx on :8080 (a tiny body, every connection
//! closed by the client's `Connection: close`); backend 1 also runs an
//! `iperf3` server on :5201, reached through a second VIP (198.18.2.11:5201).
//! Each gateway is set up by a guard whose `Drop` takes it down again, so a
//! failed run leaves nothing behind for the next one.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use serde_json::{json, Value};
use xdplb_tests::{deploy::Deployment, http_get, wait_until, Lab, LabChild};

use crate::sys::{self, MachineCpu};

/// Port nginx listens on in every backend.
const WEB_PORT: u16 = 8080;
/// iperf3's default port, on backend 1 and on the bulk VIP.
const BULK_PORT: u16 = 5201;
/// The nftables table this benchmark owns in the gateway namespace.
const NFT_TABLE: &str = "xlbench";
/// How long a gateway gets to start answering on its address.
const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// Seconds a wrk or iperf3 run may overrun its duration before `timeout`
/// kills it.
const TOOL_GRACE_S: u64 = 30;
/// Quiet time measured before each round to subtract the idle machine.
const BASELINE: Duration = Duration::from_secs(2);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Gw {
    Forward,
    Nft,
    Haproxy,
    Xdplb,
}

impl Gw {
    pub const ALL: [Gw; 4] = [Gw::Forward, Gw::Nft, Gw::Haproxy, Gw::Xdplb];

    pub fn parse(name: &str) -> Option<Gw> {
        Gw::ALL.into_iter().find(|g| g.name() == name)
    }

    pub fn name(self) -> &'static str {
        match self {
            Gw::Forward => "forward",
            Gw::Nft => "nft",
            Gw::Haproxy => "haproxy",
            Gw::Xdplb => "xdplb",
        }
    }

    /// Where the client sends short connections and bulk traffic.
    fn targets(self) -> (SocketAddr, SocketAddr) {
        match self {
            Gw::Forward => (
                SocketAddr::from((Lab::backend_addr(0), WEB_PORT)),
                SocketAddr::from((Lab::backend_addr(0), BULK_PORT)),
            ),
            _ => (web_vip(), bulk_vip()),
        }
    }
}

fn web_vip() -> SocketAddr {
    SocketAddr::from((Lab::vip(0), 80))
}

fn bulk_vip() -> SocketAddr {
    SocketAddr::from((Lab::vip(1), BULK_PORT))
}

pub struct GwOpts {
    /// The gateways to compare, in the order each round runs them.
    pub gateways: Vec<Gw>,
    pub rounds: usize,
    pub wrk_secs: u64,
    pub iperf_secs: u64,
    pub connections: u32,
    pub threads: u32,
}

/// nginx in every backend namespace and iperf3 in backend 1.
struct Servers {
    children: Vec<LabChild>,
}

impl Servers {
    fn start(lab: &Lab) -> Result<Servers> {
        let mut children = Vec::new();
        for i in 0..lab.backends() {
            let dir = lab.dir().join(format!("nginx-b{}", i + 1));
            std::fs::create_dir_all(dir.join("tmp"))?;
            let conf = dir.join("nginx.conf");
            std::fs::write(&conf, nginx_conf(&dir, i))?;
            let child = lab.spawn(
                lab.backend_ns(i),
                &[
                    "nginx",
                    "-p",
                    &dir.to_string_lossy(),
                    "-e",
                    &dir.join("error.log").to_string_lossy(),
                    "-c",
                    &conf.to_string_lossy(),
                ],
            )?;
            let addr = SocketAddr::from((Lab::backend_addr(i), WEB_PORT));
            let ns = lab.backend_ns(i).to_owned();
            let up = wait_until(READY_TIMEOUT, Duration::from_millis(50), || {
                lab.run_in(&ns, || http_get(addr, "/healthz"))
                    .ok()
                    .and_then(|r| r.ok())
                    .is_some_and(|(s, _)| s == 200)
            });
            ensure!(up, "nginx in b{} did not come up: {}", i + 1, child.log());
            children.push(child);
        }
        let iperf = lab.spawn(
            lab.backend_ns(0),
            &["iperf3", "-s", "-p", &BULK_PORT.to_string()],
        )?;
        let up = wait_until(READY_TIMEOUT, Duration::from_millis(50), || {
            lab.exec_ok("b1", &["ss", "-Hltn", &format!("sport = :{BULK_PORT}")])
                .is_ok_and(|o| !o.trim().is_empty())
        });
        ensure!(up, "iperf3 -s did not come up: {}", iperf.log());
        children.push(iperf);
        Ok(Servers { children })
    }

    fn stop(self) {
        for c in &self.children {
            if c.terminate(Duration::from_secs(5)).is_err() {
                c.kill();
            }
        }
    }
}

fn nginx_conf(dir: &std::path::Path, i: usize) -> String {
    let d = dir.display();
    format!(
        "daemon off;
master_process on;
worker_processes 2;
pid {d}/nginx.pid;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    client_body_temp_path {d}/tmp/body;
    proxy_temp_path {d}/tmp/proxy;
    keepalive_requests 1000000;
    server {{
        listen {WEB_PORT} backlog=4096;
        default_type text/plain;
        location / {{ return 200 \"b{}\\n\"; }}
    }}
}}
",
        i + 1
    )
}

/// A gateway set up in the gateway namespace; dropping it takes it down.
struct Active<'a> {
    gw: Gw,
    d: &'a mut Deployment,
    haproxy: Option<LabChild>,
}

impl Active<'_> {
    /// The gateway's own process, whose CPU time is added to its cost.
    fn pid(&self) -> Option<u32> {
        match self.gw {
            Gw::Haproxy => self.haproxy.as_ref().map(LabChild::pid),
            Gw::Xdplb => self.d.daemon.as_ref().map(LabChild::pid),
            _ => None,
        }
    }

    fn teardown(&mut self) -> Result<()> {
        let lab = &self.d.lab;
        match self.gw {
            Gw::Forward => {}
            Gw::Nft => {
                lab.exec_ok("gw", &["nft", "delete", "table", "ip", NFT_TABLE])?;
            }
            Gw::Haproxy => {
                if let Some(h) = self.haproxy.take() {
                    if h.terminate(Duration::from_secs(5)).is_err() {
                        h.kill();
                    }
                }
                for vip in [Lab::vip(0), Lab::vip(1)] {
                    let _ = lab.exec(
                        "gw",
                        &["ip", "addr", "del", &format!("{vip}/32"), "dev", "lo"],
                    );
                }
            }
            Gw::Xdplb => {
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
                ensure!(
                    xdp_mode(&self.d.lab)?.is_none(),
                    "an XDP program is still attached after `xdplb down`"
                );
            }
        }
        Ok(())
    }
}

impl Drop for Active<'_> {
    fn drop(&mut self) {
        if let Err(e) = self.teardown() {
            eprintln!("gateways: teardown of {}: {e:#}", self.gw.name());
        }
        self.gw = Gw::Forward; // a second teardown is a no-op
    }
}

/// Which XDP mode is attached to the gateway's client-side interface, if any.
pub fn xdp_mode(lab: &Lab) -> Result<Option<&'static str>> {
    let out = lab.exec_ok(
        "gw",
        &["ip", "-d", "link", "show", "dev", Lab::gw_ifaces()[0]],
    )?;
    Ok(if out.contains("xdpgeneric") {
        Some("generic")
    } else if out.contains("xdpoffload") {
        Some("offload")
    } else if out.contains("xdp") {
        Some("native")
    } else {
        None
    })
}

fn setup<'a>(d: &'a mut Deployment, gw: Gw) -> Result<Active<'a>> {
    let mut a = Active {
        gw,
        d,
        haproxy: None,
    };
    let lab = &a.d.lab;
    match gw {
        Gw::Forward => {}
        Gw::Nft => {
            let file = lab.dir().join("nft.conf");
            std::fs::write(&file, nft_rules(lab.backends()))?;
            // Guard first: a half-applied ruleset is still removed.
            lab.exec_ok("gw", &["nft", "-f", &file.to_string_lossy()])
                .context("nft -f")?;
        }
        Gw::Haproxy => {
            for vip in [Lab::vip(0), Lab::vip(1)] {
                lab.exec_ok(
                    "gw",
                    &["ip", "addr", "add", &format!("{vip}/32"), "dev", "lo"],
                )?;
            }
            let file = lab.dir().join("haproxy.cfg");
            std::fs::write(&file, haproxy_cfg(lab.backends()))?;
            let h = lab.spawn("gw", &["haproxy", "-db", "-f", &file.to_string_lossy()])?;
            a.haproxy = Some(h);
        }
        Gw::Xdplb => {
            std::fs::write(&a.d.config_path, xdplb_cfg(&a.d.lab))?;
            a.d.pools.clear();
            a.d.start_daemon()?;
            let want = a.d.lab.backends() + 1;
            let mut active = 0;
            wait_until(READY_TIMEOUT, Duration::from_millis(100), || {
                active = a.d.status().map(|s| count_active(&s)).unwrap_or(0);
                active == want
            });
            ensure!(
                active == want,
                "only {active} of {want} xdplb backends became active: {}",
                a.d.daemon_log()
            );
        }
    }
    let (web, bulk) = gw.targets();
    let lab = &a.d.lab;
    let ready = wait_until(READY_TIMEOUT, Duration::from_millis(50), || {
        lab.run_in("client", || {
            http_get(web, "/").is_ok_and(|(s, _)| s == 200)
                && std::net::TcpStream::connect_timeout(&bulk, Duration::from_secs(1)).is_ok()
        })
        .unwrap_or(false)
    });
    if !ready {
        let log = a
            .haproxy
            .as_ref()
            .map(LabChild::log)
            .unwrap_or_else(|| a.d.daemon_log());
        bail!("{} does not answer on {web} and {bulk}: {log}", gw.name());
    }
    Ok(a)
}

/// TCP sockets in `ns` by state, e.g. `ESTAB 3, LAST-ACK 120` (diagnostics).
fn socket_states(lab: &Lab, ns: &str) -> String {
    let Ok(out) = lab.exec_ok(ns, &["ss", "-Htan"]) else {
        return "?".into();
    };
    let mut counts = std::collections::BTreeMap::new();
    for l in out.lines() {
        if let Some(st) = l.split_whitespace().next() {
            *counts.entry(st.to_owned()).or_insert(0u64) += 1;
        }
    }
    let v: Vec<String> = counts.iter().map(|(k, n)| format!("{k} {n}")).collect();
    v.join(", ")
}

/// New flows the data plane counted on the web VIP (`xdplb stats --json`).
fn web_new_flows(stats: &Value) -> u64 {
    let vip = web_vip().to_string();
    stats["vips"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|v| v["vip"].as_str() == Some(vip.as_str()) || v["pool"] == "web")
        .filter_map(|v| v["new_flows"].as_u64())
        .max()
        .unwrap_or(0)
}

fn count_active(status: &Value) -> usize {
    status["pools"].as_array().map_or(0, |pools| {
        pools
            .iter()
            .flat_map(|p| p["backends"].as_array().into_iter().flatten())
            .filter(|b| b["state"] == "active")
            .count()
    })
}

fn nft_rules(backends: usize) -> String {
    let map: Vec<String> = (0..backends)
        .map(|i| format!("{i} : {} . {WEB_PORT}", Lab::backend_addr(i)))
        .collect();
    format!(
        "table ip {NFT_TABLE} {{
    chain prerouting {{
        type nat hook prerouting priority dstnat; policy accept;
        ip daddr {} tcp dport 80 dnat ip to numgen inc mod {backends} map {{ {} }}
        ip daddr {} tcp dport {BULK_PORT} dnat ip to {}:{BULK_PORT}
    }}
}}
",
        Lab::vip(0),
        map.join(", "),
        Lab::vip(1),
        Lab::backend_addr(0),
    )
}

fn haproxy_cfg(backends: usize) -> String {
    let mut s = format!(
        "global
    maxconn 8000
defaults
    mode tcp
    timeout connect 2s
    timeout client 30s
    timeout server 30s
frontend web
    bind {}:80
    default_backend web
backend web
    balance roundrobin
",
        Lab::vip(0)
    );
    for i in 0..backends {
        s += &format!(
            "    server b{} {}:{WEB_PORT}\n",
            i + 1,
            Lab::backend_addr(i)
        );
    }
    s += &format!(
        "frontend bulk
    bind {}:{BULK_PORT}
    default_backend bulk
backend bulk
    server b1 {}:{BULK_PORT}
",
        Lab::vip(1),
        Lab::backend_addr(0)
    );
    s
}

fn xdplb_cfg(lab: &Lab) -> String {
    let [c, b] = Lab::gw_ifaces();
    let mut s = format!(
        "[dataplane]
interfaces = [\"{c}\", \"{b}\"]
xdp_mode = \"auto\"
pin_path = \"{}\"
flow_table_size = 1048576
ring_size = 65537

[control]
admin_socket = \"{}\"
metrics_listen = \"\"

[[pool]]
name = \"web\"
vip = \"{}\"
min_active = 1

  [pool.health]
  kind = \"http\"
  path = \"/healthz\"
  interval_ms = 1000
  timeout_ms = 500
  rise = 1
  fall = 3

",
        lab.pin_path().display(),
        lab.socket_path().display(),
        web_vip()
    );
    for i in 0..lab.backends() {
        s += &format!(
            "  [[pool.backend]]\n  name = \"b{}\"\n  addr = \"{}:{WEB_PORT}\"\n\n",
            i + 1,
            Lab::backend_addr(i)
        );
    }
    // iperf3 treats a connection without its cookie as an error, so the
    // bulk pool is probed rarely.
    s += &format!(
        "[[pool]]
name = \"bulk\"
vip = \"{}\"
min_active = 1

  [pool.health]
  kind = \"tcp\"
  interval_ms = 5000
  timeout_ms = 1000
  rise = 1
  fall = 3

  [[pool.backend]]
  name = \"bulk-b1\"
  addr = \"{}:{BULK_PORT}\"
",
        bulk_vip(),
        Lab::backend_addr(0)
    );
    s
}

/// Busy CPU-seconds per second of the machine while nothing runs.
fn baseline() -> Result<f64> {
    let m0 = MachineCpu::now()?;
    let t0 = Instant::now();
    std::thread::sleep(BASELINE);
    let m = MachineCpu::now()?.since(m0);
    Ok(m.busy / t0.elapsed().as_secs_f64())
}

fn one(
    d: &mut Deployment,
    gw: Gw,
    o: &GwOpts,
    idle_rate: f64,
    mode: &mut Option<String>,
) -> Result<Value> {
    let active = setup(d, gw)?;
    if gw == Gw::Xdplb {
        *mode = xdp_mode(&active.d.lab)?.map(str::to_owned);
    }
    let (web, bulk) = gw.targets();
    let url = format!("http://{web}/");
    let pid = active.pid();
    // Proof that xdplb's XDP program, not the kernel, carried the flows.
    let xdp_flows = |d: &Deployment| {
        (gw == Gw::Xdplb)
            .then(|| d.stats().ok().map(|s| web_new_flows(&s)))
            .flatten()
    };
    let f0 = xdp_flows(active.d);
    let p0 = pid.map(sys::process_cpu).transpose()?;
    let k0 = sys::ksoftirqd_cpu()?;
    let m0 = MachineCpu::now()?;
    let t0 = Instant::now();
    let out = active.d.lab.exec(
        "client",
        &[
            "timeout",
            "-k",
            "5",
            &(o.wrk_secs + TOOL_GRACE_S).to_string(),
            "wrk",
            "-c",
            &o.connections.to_string(),
            "-t",
            &o.threads.to_string(),
            "-d",
            &format!("{}s", o.wrk_secs),
            "--latency",
            "-H",
            "Connection: close",
            &url,
        ],
    )?;
    let wall = t0.elapsed().as_secs_f64();
    let m = MachineCpu::now()?.since(m0);
    let p1 = pid.map(sys::process_cpu).transpose()?;
    let ksoftirqd = sys::ksoftirqd_cpu()? - k0;
    let xdp_new_flows = f0
        .zip(xdp_flows(active.d))
        .map(|(a, b)| b.saturating_sub(a));
    let client_sockets = socket_states(&active.d.lab, "client");
    let stdout = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success(),
        "wrk failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let w = sys::parse_wrk(&stdout)?;
    ensure!(w.requests > 0, "wrk completed no request:\n{stdout}");
    let per_10k = |s: f64| s * 1e4 / w.requests as f64;
    let busy_net = m.busy - idle_rate * wall;
    let proc_cpu = match (p0, p1) {
        (Some(a), Some(b)) => Some(b - a),
        _ => None,
    };

    let iperf = active.d.lab.exec(
        "client",
        &[
            "timeout",
            "-k",
            "5",
            &(o.iperf_secs + TOOL_GRACE_S).to_string(),
            "iperf3",
            "--connect-timeout",
            "3000",
            "-c",
            &bulk.ip().to_string(),
            "-p",
            &bulk.port().to_string(),
            "-t",
            &o.iperf_secs.to_string(),
            "-J",
        ],
    )?;
    let bulk_bps = sys::parse_iperf3(&String::from_utf8_lossy(&iperf.stdout));
    drop(active);
    let bulk_err = bulk_bps.as_ref().err().map(|e| format!("{e:#}"));
    println!(
        "  {:<8} {:>8.0} conn/s  p50 {:>6.2} ms  p99 {:>6.2} ms  errors {:>5}  machine {:>5.2} CPU-s/10k conns{}  bulk {}",
        gw.name(),
        w.rps,
        w.p50_ms,
        w.p99_ms,
        w.errors,
        per_10k(busy_net),
        proc_cpu.map_or(String::new(), |p| format!(" (process {:.3})", per_10k(p))),
        bulk_bps.as_ref().map_or_else(|e| format!("failed: {e:#}"), |b| format!("{:.2} Gbit/s", b / 1e9)),
    );
    println!("           client TCP sockets after wrk: {client_sockets}");
    if let Some(n) = xdp_new_flows {
        println!(
            "           XDP counted {n} new flows on the VIP for {} wrk requests",
            w.requests
        );
    }
    Ok(json!({
        "rps": w.rps,
        "requests": w.requests,
        "seconds": w.seconds,
        "p50_ms": w.p50_ms,
        "p99_ms": w.p99_ms,
        "errors": w.errors,
        "wall_s": wall,
        "machine_busy_s": m.busy,
        "machine_softirq_s": m.softirq,
        "idle_busy_per_s": idle_rate,
        "cpu_per_10k_s": per_10k(busy_net),
        "softirq_per_10k_s": per_10k(m.softirq),
        "ksoftirqd_s": ksoftirqd,
        "ksoftirqd_per_10k_s": per_10k(ksoftirqd),
        "process_cpu_s": proc_cpu,
        "process_cpu_per_10k_s": proc_cpu.map(per_10k),
        "bulk_gbps": bulk_bps.ok().map(|b| b / 1e9),
        "bulk_error": bulk_err,
        "xdp_new_flows": xdp_new_flows,
        "client_sockets_after": client_sockets,
    }))
}

/// Runs the interleaved comparison on `d`'s lab.
pub fn run(d: &mut Deployment, o: &GwOpts) -> Result<Value> {
    // More client ports: every wrk connection is new.
    d.lab
        .sysctl("client", "net.ipv4.ip_local_port_range", "10000 65000")?;
    // Behind HAProxy, wrk closes first (HAProxy relays the server's FIN a
    // little after the response), so the client collects a TIME_WAIT per
    // connection to the VIP; without reuse, connect() then crawls through
    // a full port range and every later gateway on that VIP is throttled
    // by the load generator, not by itself. Load generators run with this.
    d.lab.sysctl("client", "net.ipv4.tcp_tw_reuse", "1")?;
    let servers = Servers::start(&d.lab)?;
    let result = rounds(d, o);
    servers.stop();
    result
}

fn rounds(d: &mut Deployment, o: &GwOpts) -> Result<Value> {
    let mut runs = Vec::new();
    let mut mode = None;
    let mut baselines = Vec::new();
    for round in 0..o.rounds {
        let idle = baseline()?;
        baselines.push(idle);
        println!(
            "gateways: round {}/{} (idle machine {:.3} CPU-s/s)",
            round + 1,
            o.rounds,
            idle
        );
        for &gw in &o.gateways {
            let mut row = match one(d, gw, o, idle, &mut mode) {
                Ok(v) => v,
                Err(e) => {
                    println!("  {:<8} failed: {e:#}", gw.name());
                    json!({ "error": format!("{e:#}") })
                }
            };
            row["gateway"] = json!(gw.name());
            row["round"] = json!(round);
            runs.push(row);
            // A gateway whose teardown failed would distort the others.
            if gw == Gw::Xdplb && xdp_mode(&d.lab)?.is_some() {
                bail!("XDP still attached after the xdplb run; stopping the comparison");
            }
        }
    }
    Ok(json!({
        "rounds": o.rounds,
        "wrk_secs": o.wrk_secs,
        "iperf_secs": o.iperf_secs,
        "connections": o.connections,
        "threads": o.threads,
        "backends": d.lab.backends(),
        "idle_busy_per_s": baselines,
        "xdp_mode": mode,
        "runs": runs,
    }))
}
