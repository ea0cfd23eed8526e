//! The direct-return scenarios shared by `dsr.rs` and `tunnel.rs`: the
//! same operator story in either mode, on a lab whose backends answer the
//! clients through a router, never through the gateway
//! (`LabBuilder::direct_return`):
//!
//! ```text
//!  client ── rtc [rt] rtg ── gwc [gw: xdplb] gwb ── br0 ── b1..bN (VIP on lo)
//!                 rtb ──────────────────────────────┘   default via rt
//! ```
//!
//! Requests: client → router → gateway (XDP: MAC rewrite, or IPIP) → backend.
//! Replies: backend (from the VIP) → router → client.
//!
//! The same scenarios serve an IPv6 pool (`direct6.rs`, on the dual-stack
//! twin of this lab: the tunnel is then IPv6-in-IPv6).

// Each test file uses the scenarios it needs (`dsr.rs` no tcpdump), and
// each is compiled as its own crate.
#![allow(dead_code)]

use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use serde_json::Value;
use xdplb_tests::{
    addr::{
        v6_of, BACKEND_IF, GW_BACKEND_IF, GW_CLIENT_IF, ROUTER_BACKEND_ADDR, ROUTER_BACKEND_IF,
    },
    deploy::{find_backend, spread_flows, DataplaneSpec, Deployment, PoolSpec, SPREAD_TOLERANCE},
    http::{http_get_bytes, pattern},
    http_get, wait_until, KeepAliveClient, Lab, LabChild,
};

/// The bulk download that must reach the client with the gateway seeing
/// none of it.
const DOWNLOAD: usize = 16 << 20;
/// Its bound (a few hundred MB/s on these veths; generous for a shared host).
const DOWNLOAD_DEADLINE: Duration = Duration::from_secs(30);
/// What the gateway's backend side may receive meanwhile (health probes'
/// answers, ARP, stray bridge floods): a small fraction of the download.
const GATEWAY_RX_ALLOWANCE: u64 = 512 << 10;

/// A deployment of one `mode` pool (`"dsr"` or `"tunnel"`) over `n`
/// backends on a direct-return lab (dual-stack for an IPv6 pool); for
/// `tunnel`, every backend runs `xdplb decap --interface eth0 --allow`
/// (the gateway's tunnel sources, default pin path) first, and
/// an IPv6 pool gets a `tunnel_source` of each family (the IPv4 one unused
/// by it: the product must pick the pool's own). The daemon is running.
pub fn deploy(mode: &str, pool: PoolSpec) -> Result<Deployment> {
    let dp = match (mode, pool.ipv6) {
        ("tunnel", false) => DataplaneSpec::tunnel(),
        ("tunnel", true) => DataplaneSpec::tunnel_dual(),
        _ => DataplaneSpec::default(),
    };
    let mut d = Deployment::configured(Lab::builder().direct_return(true), vec![pool], dp)?;
    if mode == "tunnel" {
        for i in 0..d.lab.backends() {
            let out = d.decap_up(i, BACKEND_IF)?;
            println!("b{}: xdplb decap: {}", i + 1, out.trim());
        }
    }
    d.start_daemon()?;
    Ok(d)
}

/// What a direct-return backend must hold, as the lab sets it: the VIP on
/// loopback, arp_ignore 1 and arp_announce 2, its default route (of the
/// pool's family) via the router, not the gateway.
pub fn backends_are_configured(d: &Deployment) -> Result<()> {
    let pool = &d.pools[0];
    let vip = pool.vip_addr().ip();
    let (family, len, router) = if pool.ipv6 {
        ("-6", 128, v6_of(ROUTER_BACKEND_ADDR).to_string())
    } else {
        ("-4", 32, ROUTER_BACKEND_ADDR.to_string())
    };
    for b in &pool.backends {
        let ns = d.lab.backend_ns(b.lab_index);
        let lo = d
            .lab
            .exec_ok(ns, &["ip", family, "-o", "addr", "show", "dev", "lo"])?;
        ensure!(
            lo.contains(&format!(" {vip}/{len} ")),
            "{}: lo has {lo}",
            b.name
        );
        for key in ["all", BACKEND_IF] {
            let ignore = d.lab.exec_ok(
                ns,
                &["sysctl", "-n", &format!("net.ipv4.conf.{key}.arp_ignore")],
            )?;
            let announce = d.lab.exec_ok(
                ns,
                &["sysctl", "-n", &format!("net.ipv4.conf.{key}.arp_announce")],
            )?;
            ensure!(
                ignore.trim() == "1" && announce.trim() == "2",
                "{}: {key} arp_ignore {ignore} arp_announce {announce}",
                b.name
            );
        }
        let route = d
            .lab
            .exec_ok(ns, &["ip", family, "route", "show", "default"])?;
        ensure!(
            route.contains(&format!("via {router} ")),
            "{}: {route}",
            b.name
        );
    }
    Ok(())
}

/// New connections follow the weights 1:2:3 (pool built with
/// [`weighted`]), each share within `SPREAD_TOLERANCE` over enough
/// connections that a correct build fails less than once in 10,000 runs.
pub fn spread_follows_weights(d: &Deployment) -> Result<()> {
    let n = spread_flows(3, SPREAD_TOLERANCE);
    let s = d.spread(n)?;
    println!("spread over {n} connections: {s:?}");
    ensure!(s.values().sum::<usize>() == n, "failures: {s:?}");
    let share = |k: &str| s.get(k).copied().unwrap_or(0) as f64 / n as f64;
    for (k, want) in [
        ("web-1", 1.0 / 6.0),
        ("web-2", 2.0 / 6.0),
        ("web-3", 3.0 / 6.0),
    ] {
        ensure!(
            (share(k) - want).abs() < SPREAD_TOLERANCE,
            "{k}: {:.3} of {n} new connections vs {want:.3} ± {SPREAD_TOLERANCE} ({s:?})",
            share(k)
        );
    }
    Ok(())
}

/// Three primaries weighted 100, 200, 300, any one enough to serve.
pub fn weighted(mode: &str) -> PoolSpec {
    let mut pool = PoolSpec::direct(mode, 3);
    pool.min_active = 1;
    for (b, w) in pool.backends.iter_mut().zip([100, 200, 300]) {
        b.weight = w;
    }
    pool
}

/// A drained backend keeps its established keep-alive connection and gets
/// no new one; undrain brings it back.
pub fn drain_keeps_established(d: &Deployment) -> Result<()> {
    let vip = d.pools[0].vip_addr();
    let mut conn = d.lab.run_in("client", || KeepAliveClient::connect(vip))??;
    let (_, first) = conn.get("/")?;
    let target = first.trim().to_string();
    d.ctl(&["drain", "web", &target])?;
    ensure!(d.backend_status("web", &target)?["state"] == "draining");
    for _ in 0..5 {
        let (s, body) = conn.get("/")?;
        ensure!(
            s == 200 && body.trim() == target,
            "keep-alive moved: {body}"
        );
    }
    let s = d.spread(30)?;
    println!("drained {target}: {s:?}");
    ensure!(
        !s.contains_key(&target) && s.values().sum::<usize>() == 30,
        "{s:?}"
    );
    d.ctl(&["undrain", "web", &target])?;
    d.wait_state(&target, "state", "active", Duration::from_secs(2))?;
    Ok(())
}

/// A multi-MB download reaches the client intact while the gateway sees
/// none of the replies: its reverse-NAT counters stay at zero, its
/// backend-side interface receives almost nothing and its client-side one
/// sends almost nothing, while the router's backend leg carries it all.
/// Returns (bytes, seconds).
pub fn replies_bypass_the_gateway(d: &Deployment, sent_event: &str) -> Result<(usize, f64)> {
    let vip = d.pools[0].vip_addr();
    let (gwb_rx0, _) = d.lab.link_bytes("gw", GW_BACKEND_IF)?;
    let (_, gwc_tx0) = d.lab.link_bytes("gw", GW_CLIENT_IF)?;
    let (rtb_rx0, _) = d.lab.link_bytes("rt", ROUTER_BACKEND_IF)?;
    let started = Instant::now();
    let (status, body) = d.lab.run_in("client", || {
        http_get_bytes(
            vip,
            &format!("/bytes/{DOWNLOAD}"),
            DOWNLOAD,
            DOWNLOAD_DEADLINE,
        )
    })??;
    let secs = started.elapsed().as_secs_f64();
    ensure!(status == 200, "download status {status}");
    ensure!(body == pattern(DOWNLOAD), "download corrupted");
    let (gwb_rx1, _) = d.lab.link_bytes("gw", GW_BACKEND_IF)?;
    let (_, gwc_tx1) = d.lab.link_bytes("gw", GW_CLIENT_IF)?;
    let (rtb_rx1, _) = d.lab.link_bytes("rt", ROUTER_BACKEND_IF)?;
    let (gwb_rx, gwc_tx, rtb_rx) = (gwb_rx1 - gwb_rx0, gwc_tx1 - gwc_tx0, rtb_rx1 - rtb_rx0);
    println!(
        "download {DOWNLOAD} bytes in {secs:.2} s ({:.0} MB/s): gateway {GW_BACKEND_IF} rx {gwb_rx} B, \
         {GW_CLIENT_IF} tx {gwc_tx} B; router {ROUTER_BACKEND_IF} rx {rtb_rx} B",
        DOWNLOAD as f64 / secs / 1e6
    );
    ensure!(
        gwb_rx < GATEWAY_RX_ALLOWANCE && gwc_tx < GATEWAY_RX_ALLOWANCE,
        "replies crossed the gateway: {GW_BACKEND_IF} rx {gwb_rx} B, {GW_CLIENT_IF} tx {gwc_tx} B"
    );
    ensure!(
        rtb_rx >= DOWNLOAD as u64,
        "the router carried only {rtb_rx} B of the {DOWNLOAD} B download"
    );
    let stats = d.stats()?;
    let backends = stats["backends"].as_array().context("no backends")?;
    let mut requests = 0;
    for b in backends {
        for field in ["reply_packets", "reply_bytes"] {
            let v = b[field].as_u64().unwrap_or(0);
            ensure!(v == 0, "{}: {field} = {v} ({b})", b["name"]);
        }
        requests += b["packets"].as_u64().unwrap_or(0);
    }
    let sent = counter(&stats, "events", sent_event);
    println!(
        "stats: reply_packets/reply_bytes 0 on every backend; requests forwarded {requests} packets; \
         {sent_event} {sent}; direct_unreachable {}",
        counter(&stats, "drop_reasons", "direct_unreachable")
    );
    ensure!(sent > 0, "{sent_event} is 0: {stats}");
    ensure!(
        counter(&stats, "drop_reasons", "direct_unreachable") == 0,
        "{stats}"
    );
    Ok((DOWNLOAD, secs))
}

/// `global.<group>.<name>` of `xdplb stats --json`.
pub fn counter(stats: &Value, group: &str, name: &str) -> u64 {
    stats["global"][group][name].as_u64().unwrap_or(0)
}

/// A controller restart (SIGTERM, start again) with a live keep-alive
/// connection: it keeps working throughout, on the same backend, and new
/// connections are served while the controller is away.
pub fn restart_keeps_a_live_connection(d: &mut Deployment) -> Result<()> {
    let vip = d.pools[0].vip_addr();
    let mut conn = d.lab.run_in("client", || KeepAliveClient::connect(vip))??;
    let (_, first) = conn.get("/")?;
    let first = first.trim().to_string();
    d.stop_daemon()?;
    let (s, body) = conn.get("/")?;
    ensure!(
        s == 200 && body.trim() == first,
        "established connection broke while the controller was away: {body}"
    );
    let s = d.spread(10)?;
    ensure!(
        s.values().sum::<usize>() == 10 && s.keys().all(|k| k.starts_with("web-")),
        "while the controller was away: {s:?}"
    );
    d.start_daemon()?;
    for _ in 0..5 {
        let (s, body) = conn.get("/")?;
        ensure!(
            s == 200 && body.trim() == first,
            "connection moved after restart: {body}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    println!("restart: keep-alive connection stayed on {first}");
    Ok(())
}

/// A backend's server dies: it is marked down within interval × fall +
/// timeout, and new connections heal within that bound plus one controller
/// beat (`xdplb::controller::TICK`).
pub fn failover_heals(d: &Deployment, victim: &str) -> Result<()> {
    let pool = &d.pools[0];
    let bound = pool.detection_bound();
    let healed_by = bound + xdplb::controller::TICK;
    let vip = pool.vip_addr();
    d.kill_server(pool.backend(victim).lab_index);
    let killed = Instant::now();
    let attempts = d.lab.run_in("client", || {
        let mut v = Vec::new();
        while killed.elapsed() < bound + Duration::from_secs(2) {
            let started = killed.elapsed();
            let ok = matches!(http_get(vip, "/"), Ok((200, ref b)) if b.trim() != victim);
            v.push((started, ok));
            std::thread::sleep(Duration::from_millis(10));
        }
        v
    })?;
    let healed_at = attempts
        .iter()
        .filter(|(_, ok)| !ok)
        .map(|(t, _)| *t)
        .max()
        .unwrap_or_default();
    let b = d.backend_status("web", victim)?;
    println!(
        "failover: {} attempts, last failure started {healed_at:?} after the kill (bound {bound:?} + one beat = {healed_by:?}); {victim} {}",
        attempts.len(),
        b["state"]
    );
    ensure!(
        healed_at <= healed_by,
        "new connections healed only after {healed_at:?}; log:\n{}",
        d.daemon_log()
    );
    ensure!(
        attempts.iter().rev().take(20).all(|(_, ok)| *ok),
        "connections still failing at the end"
    );
    ensure!(b["health"] == "down" && b["state"] == "down", "{b}");
    let s = d.spread(20)?;
    ensure!(
        !s.contains_key(victim) && s.values().sum::<usize>() == 20,
        "{s:?}"
    );
    Ok(())
}

/// How long a connection attempt waits for the handshake: an answered
/// SYN is answered in well under a millisecond here, and an unanswered one
/// must cost little (its first retransmission is 1 s away).
const ATTEMPT_TIMEOUT: Duration = Duration::from_millis(300);
/// Connection attempts at most, to land enough on one backend.
const MAX_ATTEMPTS: usize = 40;

/// What one walk of the lab's flow table may take, with the status call
/// (about 30 ms together here; generous for a shared host).
const CENSUS_WALK: Duration = Duration::from_millis(500);

/// How long after the flow table changes `xdplb status` shows it, from
/// the controller's census loop: a walk, then a sleep of
/// `FLOW_COUNT_EVERY` or `FLOW_COUNT_DUTY` times the walk, whichever is
/// longer; a change just after a walk began is seen only by the next walk.
fn census_bound() -> Duration {
    use xdplb::controller::{FLOW_COUNT_DUTY, FLOW_COUNT_EVERY};
    FLOW_COUNT_EVERY.max(CENSUS_WALK * FLOW_COUNT_DUTY) + 2 * CENSUS_WALK
}

/// The backends `xdplb status --json` flags `unanswered`, and `victim`'s
/// status entry.
fn unanswered(d: &Deployment, victim: &str) -> Result<(Vec<String>, Value)> {
    let s = d.status()?;
    let pool = &d.pools[0].name;
    let flagged = s["pools"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| &p["name"] == pool))
        .and_then(|p| p["backends"].as_array())
        .with_context(|| format!("no backends of {pool} in {s}"))?
        .iter()
        .filter(|b| b["unanswered"] == true)
        .map(|b| b["name"].as_str().unwrap_or_default().to_string())
        .collect();
    let b = find_backend(&s, pool, victim).with_context(|| format!("{victim} not in {s}"))?;
    Ok((flagged, b))
}

/// The `xdplb status` table rows that say `UNANSWERED`, by backend name.
fn unanswered_rows(d: &Deployment) -> Result<Vec<String>> {
    let names: Vec<&str> = d.pools[0]
        .backends
        .iter()
        .map(|b| b.name.as_str())
        .collect();
    Ok(d.ctl(&["status"])?
        .lines()
        .filter(|l| l.contains("UNANSWERED"))
        .filter_map(|l| {
            let first = l.split_whitespace().next()?;
            names.contains(&first).then(|| first.to_string())
        })
        .collect())
}

/// A backend whose probes succeed but whose answers never reach the
/// clients (the VIP taken off its loopback: the SYNs the gateway sends it
/// are not for it) is flagged `unanswered` in `xdplb status --json`, alone,
/// and the table says `UNANSWERED` on its row; with the VIP back and a
/// connection established on it, the flag clears within the census bound
/// (without one it would clear only once the half-open entries are older
/// than `FLOW_IDLE`, 30 s).
pub fn unanswered_backend_is_named(d: &Deployment, victim: &str) -> Result<()> {
    let pool = &d.pools[0];
    let vip = pool.vip_addr();
    let i = pool.backend(victim).lab_index;
    let ns = d.lab.backend_ns(i).to_owned();
    let (flagged, _) = unanswered(d, victim)?;
    ensure!(flagged.is_empty(), "flagged before the fault: {flagged:?}");
    let prefix = if vip.is_ipv4() { 32 } else { 128 };
    d.lab.exec_ok(
        &ns,
        &[
            "ip",
            "addr",
            "del",
            &format!("{}/{prefix}", vip.ip()),
            "dev",
            "lo",
        ],
    )?;
    let alarm = xdplb::controller::HALF_OPEN_ALARM;
    // Attempts until one more than the alarm timed out (only the victim
    // leaves a SYN unanswered: the others complete every handshake).
    let (timed_out, answered) = d.lab.run_in("client", || {
        let (mut timed_out, mut answered) = (0u64, 0u64);
        for _ in 0..MAX_ATTEMPTS {
            match std::net::TcpStream::connect_timeout(&vip, ATTEMPT_TIMEOUT) {
                Ok(_) => answered += 1,
                Err(_) => timed_out += 1,
            }
            if timed_out > alarm {
                break;
            }
        }
        (timed_out, answered)
    })?;
    let faulted = Instant::now();
    println!("{victim} without the VIP on lo: {timed_out} attempts timed out, {answered} answered");
    ensure!(
        timed_out > alarm,
        "only {timed_out} of {MAX_ATTEMPTS} attempts landed on {victim}"
    );
    let bound = census_bound();
    let mut last = (Vec::new(), Value::Null);
    let flagged = wait_until(bound, Duration::from_millis(100), || {
        unanswered(d, victim).is_ok_and(|u| {
            last = u;
            last.0.contains(&victim.to_string())
        })
    });
    let took = faulted.elapsed();
    let (names, b) = last;
    println!("{victim} flagged after {took:?} (bound {bound:?}): {b}");
    ensure!(
        flagged,
        "{victim} not flagged within {bound:?}: {names:?}, {b}"
    );
    ensure!(names == [victim], "flagged: {names:?}");
    ensure!(
        b["health"] == "up" && b["flows"] == 0 && b["half_open"].as_u64() >= Some(alarm),
        "{b}"
    );
    let rows = unanswered_rows(d)?;
    ensure!(rows == [victim], "UNANSWERED rows: {rows:?}");

    d.lab.vip_on_loopback(i, vip.ip())?;
    // A connection on the victim, held open: what its established count
    // needs (the half-open entries stay until they idle out).
    let conn = d
        .lab
        .run_in("client", || -> Result<Option<KeepAliveClient>> {
            for _ in 0..MAX_ATTEMPTS {
                let mut c = KeepAliveClient::connect(vip)?;
                if c.get("/")?.1.trim() == victim {
                    return Ok(Some(c));
                }
            }
            Ok(None)
        })??;
    let restored = Instant::now();
    ensure!(
        conn.is_some(),
        "no connection of {MAX_ATTEMPTS} landed on {victim}"
    );
    let cleared = wait_until(bound, Duration::from_millis(100), || {
        unanswered(d, victim).is_ok_and(|(n, _)| n.is_empty())
    });
    let took = restored.elapsed();
    let (names, b) = unanswered(d, victim)?;
    println!("{victim} cleared after {took:?} with its VIP back (bound {bound:?}): {b}");
    ensure!(
        cleared,
        "still flagged {bound:?} after the VIP came back: {names:?}, {b}"
    );
    ensure!(b["flows"].as_u64() >= Some(1), "{b}");
    ensure!(
        unanswered_rows(d)?.is_empty(),
        "UNANSWERED still in the table"
    );
    drop(conn);
    Ok(())
}

/// tcpdump of two packets matching `filter` on `iface` in `ns`, started
/// and listening.
pub fn capture(d: &Deployment, ns: &str, iface: &str, filter: &str) -> Result<LabChild> {
    let c = d
        .lab
        .spawn(ns, &["tcpdump", "-l", "-n", "-c", "2", "-i", iface, filter])?;
    let listening = wait_until(Duration::from_secs(5), Duration::from_millis(20), || {
        c.log().contains("listening on")
    });
    ensure!(listening, "tcpdump on {iface} in {ns}: {}", c.log());
    Ok(c)
}

/// The packet lines a [`capture`] printed, once it has its two.
pub fn finish(c: LabChild) -> Result<String> {
    ensure!(
        c.wait_exit(Duration::from_secs(5)).is_some(),
        "tcpdump saw fewer than 2 packets: {}",
        c.log()
    );
    Ok(c.log()
        .lines()
        .filter(|l| l.contains(" IP ") || l.contains(" IP6 "))
        .map(|l| format!("  {l}\n"))
        .collect())
}

/// `xdplb decap --down` on every backend: no XDP program left on eth0, no
/// pin left under the lab's decap pin path.
pub fn decap_down(d: &Deployment) -> Result<()> {
    for i in 0..d.lab.backends() {
        d.decap(i, &["--down", "--interface", BACKEND_IF])?;
        let link = d.lab.exec_ok(
            d.lab.backend_ns(i),
            &["ip", "-d", "link", "show", BACKEND_IF],
        )?;
        ensure!(!link.contains("xdp"), "b{}: still attached: {link}", i + 1);
        let pin = d.lab.decap_pin_path(i);
        ensure!(!pin.exists(), "b{}: pins left at {}", i + 1, pin.display());
    }
    Ok(())
}

/// `xdplb decap --stats --json` on every backend: each has decapsulated
/// packets (the tunnel reached them all) and dropped none as malformed.
pub fn every_backend_decapsulated(d: &Deployment) -> Result<()> {
    for i in 0..d.lab.backends() {
        let s = d.decap_stats(i)?;
        println!("b{}: xdplb decap --stats --json: {s}", i + 1);
        ensure!(
            s["decapsulated"].as_u64().unwrap_or(0) > 0,
            "b{}: nothing decapsulated: {s}",
            i + 1
        );
        ensure!(
            s["dropped_malformed"].as_u64() == Some(0),
            "b{}: {s}",
            i + 1
        );
    }
    Ok(())
}
