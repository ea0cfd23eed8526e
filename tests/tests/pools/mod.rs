//! The operator scenarios shared by `ipv6_tcp.rs`, `udp_pool.rs` and
//! `ipv6_udp.rs`: the same story for any NAT pool, whatever its family and
//! protocol — new flows spread by weight, a drain keeps established flows
//! and moves new ones, a dead backend stops getting new flows within
//! interval × fall + timeout, and a controller restart with traffic
//! flowing breaks nothing.
//!
//! A "flow" is a keep-alive TCP connection, or for a UDP pool a UDP socket
//! with a fixed source port (the same 5-tuple every datagram): both must
//! stay on their backend. A "fresh flow" is a new connection, or a new
//! socket (a new ephemeral source port) asked once. UDP answers are only
//! taken from the VIP's own address and port ([`UdpFlow`]), so every UDP
//! scenario also proves the reverse NAT.

// Each test file uses the scenarios it needs (`ipv6_udp.rs` only the
// spread), and each is compiled as its own crate.
#![allow(dead_code)]

use std::{
    net::{SocketAddr, UdpSocket},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context, Result};
use serde_json::Value;
use xdplb_tests::{
    deploy::{Deployment, PoolSpec},
    http_get,
    lab::run_in_netns,
    udp::{UDP_QUERY, UDP_TRY_TIMEOUT},
    KeepAliveClient, UdpFlow,
};

/// How far a backend's share may be from its weight's.
pub use xdplb_tests::deploy::SPREAD_TOLERANCE;
/// Flows kept open across the restart.
const RESTART_FLOWS: usize = 4;
/// Pause between rounds of traffic while the daemon restarts.
const TRAFFIC_PAUSE: Duration = Duration::from_millis(20);
/// Longest the traffic thread runs, whatever happens to the test.
const TRAFFIC_DEADLINE: Duration = Duration::from_secs(60);
/// How long the data plane runs with no controller, traffic flowing.
const DOWN_FOR: Duration = Duration::from_millis(800);
/// One try per fresh UDP flow in the failover loop, so a dead backend's
/// silence is counted at once (and not hidden by a retry of the same flow).
const FAILOVER_UDP_TRY: Duration = Duration::from_millis(200);

/// Three primaries weighted 1:2:1 (`pool` is `PoolSpec::new(3, 0)` or
/// `PoolSpec::udp(3)`, in either family).
pub fn weighted(mut pool: PoolSpec) -> PoolSpec {
    ensure_three(&pool);
    for (b, w) in pool.backends.iter_mut().zip([100, 200, 100]) {
        b.weight = w;
    }
    pool.min_active = 1;
    pool
}

fn ensure_three(pool: &PoolSpec) {
    assert!(
        pool.backends.len() == 3 && pool.backends.iter().all(|b| !b.spare),
        "the scenarios want three primaries: {pool:?}"
    );
}

/// Deploys `pool` (a dual-stack lab if it is IPv6) and starts the daemon.
pub fn deploy(pool: PoolSpec) -> Result<Deployment> {
    let mut d = Deployment::new(vec![pool])?;
    d.start_daemon()?;
    Ok(d)
}

/// What the pool under test is, for messages.
fn what(d: &Deployment) -> String {
    let p = &d.pools[0];
    format!(
        "{} {} pool {} (VIP {})",
        if p.ipv6 { "IPv6" } else { "IPv4" },
        if p.udp { "UDP" } else { "TCP" },
        p.name,
        p.vip_addr()
    )
}

/// A flow kept open: answers must keep coming from one backend.
pub enum Flow {
    Tcp(KeepAliveClient),
    Udp(UdpFlow),
}

impl Flow {
    /// Opens a flow to pool 0's VIP from the client (no request yet).
    pub fn open(d: &Deployment) -> Result<Flow> {
        let vip = d.pools[0].vip_addr();
        let udp = d.pools[0].udp;
        d.lab.run_in("client", || -> Result<Flow> {
            Ok(if udp {
                Flow::Udp(UdpFlow::open(vip)?)
            } else {
                Flow::Tcp(KeepAliveClient::connect(vip)?)
            })
        })?
    }

    /// Who answers on this flow now.
    pub fn ask(&mut self) -> Result<String> {
        match self {
            Flow::Tcp(c) => {
                let (status, body) = c.get("/")?;
                ensure!(status == 200, "status {status}: {body}");
                Ok(body.trim().to_string())
            }
            Flow::Udp(f) => f.ask(),
        }
    }

    /// The flow's client end, for messages.
    pub fn local(&self) -> String {
        match self {
            Flow::Tcp(c) => c.local_addr().map(|a| a.to_string()),
            Flow::Udp(f) => f.local_addr().map(|a| a.to_string()),
        }
        .unwrap_or_else(|e| format!("? ({e})"))
    }
}

/// Who answers one fresh flow (must run inside the client namespace).
/// `udp_try`: the wait for a UDP answer, one datagram only.
fn fresh(vip: SocketAddr, udp: bool, udp_try: Option<Duration>) -> Result<String> {
    if udp {
        let f = UdpFlow::open(vip)?;
        match udp_try {
            Some(t) => f.ask_with(UDP_QUERY, t, 1),
            None => f.ask(),
        }
    } else {
        match http_get(vip, "/")? {
            (200, body) => Ok(body.trim().to_string()),
            (s, body) => bail!("status {s}: {body}"),
        }
    }
}

/// New flows follow the weights (1:2:1 within [`SPREAD_TOLERANCE`] over
/// enough fresh flows, each answered, that a correct build fails less than
/// once in 10,000 runs: `spread_flows`), the counters of `xdplb
/// stats` cover them, and `xdplb status` shows the pool as configured
/// (VIP, protocol, backend addresses of its family).
pub fn spread_follows_weights(d: &Deployment) -> Result<()> {
    let pool = &d.pools[0];
    let n = xdplb_tests::deploy::spread_flows(pool.backends.len(), SPREAD_TOLERANCE);
    let s = d.spread(n)?;
    let answered: usize = pool
        .backends
        .iter()
        .map(|b| s.get(&b.name).copied().unwrap_or(0))
        .sum();
    ensure!(
        answered == n,
        "{}: {answered} of {n} fresh flows answered by a backend; who answered: {s:?}",
        what(d)
    );
    let total: u32 = pool.backends.iter().map(|b| b.weight).sum();
    for b in &pool.backends {
        let want = b.weight as f64 / total as f64;
        let got = s.get(&b.name).copied().unwrap_or(0) as f64 / n as f64;
        ensure!(
            (got - want).abs() < SPREAD_TOLERANCE,
            "{}: {} (weight {}) got {got:.3} of {n} new flows, expected {want:.3} ± {SPREAD_TOLERANCE}; all: {s:?}",
            what(d),
            b.name,
            b.weight
        );
    }
    println!("{}: {n} new flows spread {s:?}", what(d));

    let stats = d.stats()?;
    let vip = stats["vips"]
        .as_array()
        .and_then(|v| v.iter().find(|v| v["pool"] == pool.name.as_str()))
        .with_context(|| format!("pool {} not in `xdplb stats`: {stats}", pool.name))?;
    let new_flows = vip["new_flows"].as_u64().unwrap_or(0);
    ensure!(
        new_flows >= n as u64,
        "{}: `xdplb stats` counts {new_flows} new flows on the VIP after {n} fresh flows: {vip}",
        what(d)
    );
    for b in &pool.backends {
        let got = s.get(&b.name).copied().unwrap_or(0) as u64;
        let counted = stats["backends"]
            .as_array()
            .and_then(|bs| bs.iter().find(|x| x["name"] == b.name.as_str()))
            .and_then(|x| x["new_flows"].as_u64())
            .with_context(|| format!("{} not in `xdplb stats`: {stats}", b.name))?;
        ensure!(
            counted >= got,
            "{}: {} answered {got} new flows but `xdplb stats` counts {counted}",
            what(d),
            b.name
        );
    }

    let status = d.pool_status(&pool.name)?;
    let shown: Option<SocketAddr> = status["vip"].as_str().and_then(|v| v.parse().ok());
    ensure!(
        shown == Some(pool.vip_addr()),
        "`xdplb status` shows VIP {} for {}, expected {}",
        status["vip"],
        pool.name,
        pool.vip_addr()
    );
    let proto = if pool.udp { "udp" } else { "tcp" };
    ensure!(
        status["protocol"] == proto,
        "`xdplb status` shows protocol {} for {}, expected {proto:?}",
        status["protocol"],
        pool.name
    );
    for b in &pool.backends {
        let st = backend_entry(&status, &b.name)?;
        let addr: Option<SocketAddr> = st["addr"].as_str().and_then(|a| a.parse().ok());
        ensure!(
            addr == Some(pool.backend_addr(b.lab_index)),
            "`xdplb status` shows {} at {}, expected {}",
            b.name,
            st["addr"],
            pool.backend_addr(b.lab_index)
        );
        ensure!(
            st["health"] == "up" && st["state"] == "active",
            "{}: {} should be up and active: {st}",
            what(d),
            b.name
        );
    }
    Ok(())
}

fn backend_entry(pool_status: &Value, name: &str) -> Result<Value> {
    pool_status["backends"]
        .as_array()
        .and_then(|bs| bs.iter().find(|b| b["name"] == name))
        .cloned()
        .with_context(|| format!("{name} not in {pool_status}"))
}

/// `xdplb drain`: an open flow keeps its backend; fresh flows avoid it;
/// `xdplb undrain` gives it new flows again.
pub fn drain_keeps_established(d: &Deployment) -> Result<()> {
    let pool = d.pools[0].name.clone();
    let mut flow = Flow::open(d)?;
    let target = flow.ask().context("first answer on the flow to drain")?;
    let out = d.ctl(&["drain", &pool, &target])?;
    ensure!(out.contains(&target), "`xdplb drain` said: {out}");
    let st = d.backend_status(&pool, &target)?;
    ensure!(
        st["state"] == "draining",
        "{}: {target} is {} right after `xdplb drain`, expected draining: {st}",
        what(d),
        st["state"]
    );
    for i in 0..10 {
        let who = flow.ask().with_context(|| {
            format!("established flow {} after the drain, ask {i}", flow.local())
        })?;
        ensure!(
            who == target,
            "{}: the established flow {} moved from the drained {target} to {who} (ask {i})",
            what(d),
            flow.local()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let n = 30;
    let s = d.spread(n)?;
    ensure!(
        !s.contains_key(&target),
        "{}: drained {target} still got new flows: {s:?}",
        what(d)
    );
    ensure!(
        s.iter()
            .filter(|(k, _)| d.pools[0].backends.iter().any(|b| &b.name == *k))
            .map(|(_, v)| v)
            .sum::<usize>()
            == n,
        "{}: not every new flow was answered while {target} drained: {s:?}",
        what(d)
    );
    d.ctl(&["undrain", &pool, &target])?;
    d.wait_state(&target, "state", "active", Duration::from_secs(2))?;
    let s = d.spread(40)?;
    ensure!(
        s.contains_key(&target),
        "{}: undrained {target} got none of 40 new flows: {s:?}",
        what(d)
    );
    Ok(())
}

/// Kills `victim`'s server; from then on fresh flows are tried
/// continuously: the last one that failed or reached the victim must have
/// started within interval × fall + timeout plus one controller beat
/// (`xdplb::controller::TICK`); the victim shows down, and gets none of 30
/// new flows.
pub fn failover_heals(d: &Deployment, victim: &str) -> Result<()> {
    let pool = &d.pools[0];
    let bound = pool.detection_bound();
    let healed_by = bound + xdplb::controller::TICK;
    let vip = pool.vip_addr();
    let udp = pool.udp;
    let before = d.spread(30)?;
    ensure!(
        before.contains_key(victim),
        "{}: {victim} got none of 30 new flows before the kill: {before:?}",
        what(d)
    );
    d.kill_server(pool.backend(victim).lab_index);
    let killed = Instant::now();
    let attempts = d.lab.run_in("client", || {
        let mut v = Vec::new();
        // Bounded: ends at bound + 3 s.
        while killed.elapsed() < bound + Duration::from_secs(3) {
            let started = killed.elapsed();
            let r = fresh(vip, udp, Some(FAILOVER_UDP_TRY));
            let ok = matches!(&r, Ok(who) if who != victim);
            v.push((started, ok, r));
            std::thread::sleep(Duration::from_millis(10));
        }
        v
    })?;
    let last_bad = attempts.iter().rev().find(|(_, ok, _)| !ok);
    let healed_at = last_bad.map(|(t, _, _)| *t).unwrap_or_default();
    println!(
        "{}: failover: {} attempts, last failure started {healed_at:?} after the kill (bound {bound:?} + one beat = {healed_by:?})",
        what(d),
        attempts.len()
    );
    if let Some((t, _, r)) = last_bad.filter(|_| healed_at > healed_by) {
        bail!(
            "{}: a new flow started {t:?} after the kill still failed or reached the dead {victim} \
             (bound {bound:?} + one beat = {healed_by:?}); that attempt: {r:?}\ndaemon log:\n{}",
            what(d),
            d.daemon_log()
        );
    }
    ensure!(
        attempts.iter().rev().take(20).all(|(_, ok, _)| *ok),
        "{}: fresh flows still failing at the end: {:?}",
        what(d),
        attempts.iter().rev().take(5).collect::<Vec<_>>()
    );
    let b = d.backend_status(&pool.name, victim)?;
    ensure!(
        b["health"] == "down" && b["state"] == "down",
        "{}: {victim} should show down {:?} after its server was killed: {b}",
        what(d),
        killed.elapsed()
    );
    let after = d.spread(30)?;
    ensure!(
        !after.contains_key(victim) && after.values().sum::<usize>() == 30,
        "{}: after failover, 30 new flows should all be answered by live backends: {after:?}",
        what(d)
    );
    ensure!(
        after
            .keys()
            .all(|k| pool.backends.iter().any(|b| &b.name == k)),
        "{}: {after:?}",
        what(d)
    );
    Ok(())
}

/// One round of the traffic kept flowing across a restart.
#[derive(Debug)]
struct Round {
    at: Instant,
    /// Each kept flow's answer (or error).
    flows: Vec<Result<String, String>>,
    /// One fresh flow's answer (or error).
    fresh: Result<String, String>,
}

/// `xdplb run` is stopped (SIGTERM) and started again while
/// [`RESTART_FLOWS`] flows and a stream of fresh flows keep going from the
/// client: every kept flow answers from its first backend throughout,
/// every fresh flow is answered, and traffic did flow while the
/// controller was down and after it came back.
pub fn restart_with_traffic(d: &mut Deployment) -> Result<()> {
    let names: Vec<String> = d.pools[0].backends.iter().map(|b| b.name.clone()).collect();
    let mut flows = Vec::new();
    let mut first = Vec::new();
    for i in 0..RESTART_FLOWS {
        let mut f = Flow::open(d)?;
        let who = f
            .ask()
            .with_context(|| format!("first answer on kept flow {i}"))?;
        first.push(who);
        flows.push(f);
    }
    println!("{}: kept flows answered by {first:?}", what(d));
    let stop = Arc::new(AtomicBool::new(false));
    let client_ns = d.lab.client_ns(0).to_string();
    let vip = d.pools[0].vip_addr();
    let udp = d.pools[0].udp;
    let traffic = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || -> Result<Vec<Round>> {
            run_in_netns(&client_ns, move || {
                let started = Instant::now();
                let mut rounds = Vec::new();
                while !stop.load(Ordering::Relaxed) && started.elapsed() < TRAFFIC_DEADLINE {
                    let answers = flows
                        .iter_mut()
                        .map(|f| f.ask().map_err(|e| format!("{e:#}")))
                        .collect();
                    rounds.push(Round {
                        at: Instant::now(),
                        flows: answers,
                        fresh: fresh(vip, udp, None).map_err(|e| format!("{e:#}")),
                    });
                    std::thread::sleep(TRAFFIC_PAUSE);
                }
                rounds
            })
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    let stopping = Instant::now();
    let stopped = d.stop_daemon();
    let down = Instant::now();
    std::thread::sleep(DOWN_FOR);
    let starting = Instant::now();
    let started = if stopped.is_ok() {
        d.start_daemon()
    } else {
        Ok(())
    };
    let up = Instant::now();
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    let rounds = traffic
        .join()
        .map_err(|_| anyhow::anyhow!("the traffic thread panicked"))??;
    stopped.context("stopping the daemon")?;
    started.context("starting the daemon again")?;

    let phase = |t: Instant| {
        if t < stopping {
            "before the stop"
        } else if t < down {
            "while stopping"
        } else if t < starting {
            "with no controller"
        } else if t < up {
            "while starting"
        } else {
            "after the restart"
        }
    };
    let mut problems = Vec::new();
    for r in &rounds {
        for (i, a) in r.flows.iter().enumerate() {
            match a {
                Ok(who) if *who == first[i] => {}
                Ok(who) => problems.push(format!(
                    "{}: kept flow {i} answered by {who}, not {}",
                    phase(r.at),
                    first[i]
                )),
                Err(e) => problems.push(format!("{}: kept flow {i}: {e}", phase(r.at))),
            }
        }
        match &r.fresh {
            Ok(who) if names.contains(who) => {}
            other => problems.push(format!("{}: fresh flow: {other:?}", phase(r.at))),
        }
    }
    ensure!(
        problems.is_empty(),
        "{}: {} problems in {} rounds of traffic across the restart; first ones:\n  {}",
        what(d),
        problems.len(),
        rounds.len(),
        problems
            .iter()
            .take(8)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n  ")
    );
    let count = |p: &str| rounds.iter().filter(|r| phase(r.at) == p).count();
    let (headless, after) = (count("with no controller"), count("after the restart"));
    println!(
        "{}: {} rounds, {headless} with no controller, {after} after the restart",
        what(d),
        rounds.len()
    );
    ensure!(
        headless > 0 && after > 0,
        "{}: traffic did not flow in every phase ({headless} rounds with no controller, {after} after the restart)",
        what(d)
    );
    Ok(())
}

/// A connected UDP socket (the kernel then accepts only datagrams from the
/// VIP and its port) gets its answer: the reverse NAT rewrote address and
/// port. Each try waits [`UDP_TRY_TIMEOUT`]; three tries.
pub fn connected_udp_socket_is_answered(d: &Deployment) -> Result<String> {
    let vip = d.pools[0].vip_addr();
    let any: SocketAddr = match vip {
        SocketAddr::V4(_) => "0.0.0.0:0".parse()?,
        SocketAddr::V6(_) => "[::]:0".parse()?,
    };
    d.lab.run_in("client", || -> Result<String> {
        let sock = UdpSocket::bind(any)?;
        sock.connect(vip)?;
        sock.set_read_timeout(Some(UDP_TRY_TIMEOUT))?;
        let mut buf = [0u8; 512];
        let mut errors = Vec::new();
        for _ in 0..3 {
            sock.send(UDP_QUERY)?;
            match sock.recv(&mut buf) {
                Ok(n) => return Ok(String::from_utf8_lossy(&buf[..n]).trim().to_string()),
                Err(e) => errors.push(e.to_string()),
            }
        }
        bail!(
            "a UDP socket connected to {vip} got no answer ({errors:?}): the answer did not come \
             from the VIP's address and port, or never came"
        )
    })?
}
