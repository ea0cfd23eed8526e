//! The controller under probe load: `xdplb run` health-checking 1000
//! backends (4 backend namespaces × 250 ports) once a second. Reports its
//! CPU seconds (utime + stime from `/proc/<pid>/stat`) over the window and
//! its peak RSS (`VmHWM`).
//!
//! The 250 ports per namespace are plain listening sockets created inside
//! the namespace by this process; one thread per namespace accepts and
//! closes whatever arrives, so every TCP probe completes a handshake and
//! sees a close, as against a real server.

use std::fmt::Write as _;
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use serde_json::{json, Value};
use xdplb_tests::{deploy::Deployment, wait_until, Lab};

use crate::sys;

/// First port of each namespace's listeners.
const FIRST_PORT: u16 = 10_000;
/// Maglev ring for 1000 backends: prime and ≥ 100 × 1000 (config rule).
const RING_SIZE: u32 = 100_003;
/// Probe interval the brief asks for.
const INTERVAL_MS: u64 = 1000;
const TIMEOUT_MS: u64 = 500;
/// How often the accept threads sweep their listeners.
const ACCEPT_SWEEP: Duration = Duration::from_millis(20);

pub struct ProbeOpts {
    pub backends: usize,
    pub seconds: u64,
}

/// Listening sockets in the lab's backend namespaces, drained by one
/// thread per namespace until dropped.
struct Listeners {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
    addrs: Vec<SocketAddr>,
}

impl Listeners {
    fn open(lab: &Lab, per_ns: usize, lifetime: Duration) -> Result<Listeners> {
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        let mut addrs = Vec::new();
        for i in 0..lab.backends() {
            let ip = Lab::backend_addr(i);
            let socks: Vec<TcpListener> = lab.run_in(lab.backend_ns(i), || {
                (0..per_ns)
                    .map(|k| {
                        let l = TcpListener::bind((ip, FIRST_PORT + k as u16))?;
                        l.set_nonblocking(true)?;
                        Ok(l)
                    })
                    .collect::<std::io::Result<Vec<_>>>()
            })??;
            addrs.extend(
                socks
                    .iter()
                    .map(|s| s.local_addr())
                    .collect::<Result<Vec<_>, _>>()?,
            );
            let stop = Arc::clone(&stop);
            threads.push(std::thread::spawn(move || {
                let deadline = Instant::now() + lifetime;
                while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                    for l in &socks {
                        // Bounded: at most 64 connections per sweep per port.
                        for _ in 0..64 {
                            if l.accept().is_err() {
                                break;
                            }
                        }
                    }
                    std::thread::sleep(ACCEPT_SWEEP);
                }
            }));
        }
        Ok(Listeners {
            stop,
            threads,
            addrs,
        })
    }
}

impl Drop for Listeners {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn render(lab: &Lab, addrs: &[SocketAddr]) -> String {
    let [c, b] = Lab::gw_ifaces();
    let mut s = format!(
        "[dataplane]\ninterfaces = [\"{c}\", \"{b}\"]\nxdp_mode = \"auto\"\npin_path = \"{}\"\nflow_table_size = 65536\nring_size = {RING_SIZE}\n\n[control]\nadmin_socket = \"{}\"\nmetrics_listen = \"\"\n\n[[pool]]\nname = \"many\"\nvip = \"{}:80\"\nmin_active = 1\n\n  [pool.health]\n  kind = \"tcp\"\n  interval_ms = {INTERVAL_MS}\n  timeout_ms = {TIMEOUT_MS}\n  rise = 1\n  fall = 3\n\n",
        lab.pin_path().display(),
        lab.socket_path().display(),
        Lab::vip(0),
    );
    for a in addrs {
        let _ = writeln!(
            s,
            "  [[pool.backend]]\n  name = \"b-{}-{}\"\n  addr = \"{a}\"\n",
            a.ip(),
            a.port()
        );
    }
    s
}

fn count_active(status: &Value) -> usize {
    status["pools"][0]["backends"]
        .as_array()
        .map_or(0, |bs| bs.iter().filter(|b| b["state"] == "active").count())
}

/// Runs the probe-load measurement on `d`'s lab (which must have 4
/// backend namespaces); leaves no daemon or pins behind.
pub fn run(d: &mut Deployment, o: &ProbeOpts) -> Result<Value> {
    let per_ns = o.backends.div_ceil(d.lab.backends());
    let lifetime = Duration::from_secs(o.seconds + 180);
    let listeners = Listeners::open(&d.lab, per_ns, lifetime)?;
    let addrs: Vec<SocketAddr> = listeners.addrs.iter().copied().take(o.backends).collect();
    std::fs::write(&d.config_path, render(&d.lab, &addrs))?;
    d.pools.clear();
    println!(
        "probe: xdplb run with {} backends, interval {INTERVAL_MS} ms",
        addrs.len()
    );
    let started = Instant::now();
    let result = measure(d, o, addrs.len(), started);
    // Stop the daemon and take the data plane down whatever happened.
    let _ = d.stop_daemon();
    let _ = d.xdplb(&["down", "--config", &d.config_path.to_string_lossy()]);
    drop(listeners);
    result
}

fn measure(d: &mut Deployment, o: &ProbeOpts, n: usize, started: Instant) -> Result<Value> {
    d.start_daemon().context("xdplb run (1000 backends)")?;
    let pid = d.daemon.as_ref().context("no daemon")?.pid();
    let mut active = 0;
    wait_until(Duration::from_secs(30), Duration::from_millis(500), || {
        active = d.status().map(|s| count_active(&s)).unwrap_or(0);
        active == n
    });
    ensure!(active == n, "only {active} of {n} backends became active");
    let ready_s = started.elapsed().as_secs_f64();
    let cpu0 = sys::process_cpu(pid)?;
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs(o.seconds));
    let cpu1 = sys::process_cpu(pid)?;
    let wall = t0.elapsed().as_secs_f64();
    let hwm = sys::process_mem_kib(pid, "VmHWM")?;
    let rss = sys::process_mem_kib(pid, "VmRSS")?;
    let still = d.status().map(|s| count_active(&s)).unwrap_or(0);
    let cpu = cpu1 - cpu0;
    println!(
        "probe: {n} backends: {cpu:.2} CPU-s over {wall:.1} s ({:.1}% of a core), peak RSS {} MiB, {still} active at the end",
        100.0 * cpu / wall,
        hwm / 1024
    );
    Ok(json!({
        "backends": n,
        "interval_ms": INTERVAL_MS,
        "ring_size": RING_SIZE,
        "seconds": wall,
        "cpu_s": cpu,
        "cpu_pct": 100.0 * cpu / wall,
        "probes_per_s": n as f64 * 1000.0 / INTERVAL_MS as f64,
        "cpu_us_per_probe": cpu * 1e6 / (n as f64 * wall * 1000.0 / INTERVAL_MS as f64),
        "vmhwm_kib": hwm,
        "vmrss_kib": rss,
        "ready_s": ready_s,
        "active_at_end": still,
    }))
}
