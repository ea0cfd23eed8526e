//! `mode = "tunnel"`: the gateway encapsulates requests in IPIP from
//! `tunnel_source` to the backend; each backend runs `xdplb decap
//! --interface eth0` (this kernel has no ipip device), holds the VIP on
//! loopback and answers the clients through a router, never through the
//! gateway. Spread by weight, drain, a multi-MB download with the gateway's
//! reply counters at zero and decap's own counters moving, a controller
//! restart with a live connection, failover, and `decap --down` leaving no
//! program or pin behind (see `direct/mod.rs`).

mod direct;

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddrV4},
    time::Duration,
};

use anyhow::{bail, ensure, Result};
use xdplb::packet::TCP_SYN;
use xdplb_tests::{
    addr::{BACKEND_IF, TUNNEL_PREFIX},
    deploy::{DataplaneSpec, Deployment, PoolSpec},
    raw::{parse_mac, write_tcp_frame, RawSocket, TCP_FRAME_LEN},
    skip_unless_root, wait_until, Lab,
};

#[test]
fn tunnel_spreads_drains_and_replies_bypass_the_gateway() -> Result<()> {
    if skip_unless_root() {
        return Ok(());
    }
    let d = direct::deploy("tunnel", direct::weighted("tunnel"))?;
    direct::backends_are_configured(&d)?;
    // What tcpdump shows: IPIP on the wire (the switch port to b1), the
    // inner packet on b1's eth0 (XDP runs before packet taps).
    let vip = d.pools[0].vip.ip().to_string();
    let wire = direct::capture(&d, "sw", "to-b1", "ip proto 4")?;
    let host = direct::capture(&d, "b1", BACKEND_IF, &format!("dst host {vip}"))?;
    direct::spread_follows_weights(&d)?;
    let wire = direct::finish(wire)?;
    let host = direct::finish(host)?;
    println!("tcpdump on the switch port to b1:\n{wire}tcpdump on b1 eth0:\n{host}");
    ensure!(
        wire.contains("IP 198.18.1.1 > 198.18.1.11: IP 198.18.0.2."),
        "no IPIP from the tunnel source on the wire: {wire}"
    );
    ensure!(
        host.contains(&format!("> {vip}.8080: ")) && !host.contains("IP 198.18.1.1 >"),
        "b1 does not see the inner packet: {host}"
    );
    direct::drain_keeps_established(&d)?;
    direct::replies_bypass_the_gateway(&d, "tunnel_sent")?;
    direct::every_backend_decapsulated(&d)?;
    direct::decap_down(&d)
}

/// `tunnel_source` a prefix the gateway holds whole: connections through
/// the VIP are all served, and their outer packets leave from several of
/// its addresses (so a backend's NIC can spread them over its queues),
/// which the backends' decap allows as the prefix.
#[test]
fn tunnel_from_a_prefix_spreads_outer_sources_and_serves() -> Result<()> {
    if skip_unless_root() {
        return Ok(());
    }
    let dp = DataplaneSpec {
        tunnel_prefix4: Some(TUNNEL_PREFIX),
        ..DataplaneSpec::tunnel()
    };
    let pool = PoolSpec::direct("tunnel", 2);
    let mut d = Deployment::configured(Lab::builder().direct_return(true), vec![pool], dp)?;
    let gw = d.lab.gw_ns().to_string();
    d.lab.exec_ok(
        &gw,
        &["ip", "route", "add", "local", TUNNEL_PREFIX, "dev", "lo"],
    )?;
    for i in 0..d.lab.backends() {
        d.decap(i, &["--interface", BACKEND_IF, "--allow", TUNNEL_PREFIX])?;
    }
    d.start_daemon()?;
    let wire = d.lab.spawn(
        "sw",
        &[
            "tcpdump",
            "-l",
            "-n",
            "-c",
            "20",
            "-i",
            "to-b1",
            "ip proto 4",
        ],
    )?;
    ensure!(
        wait_until(Duration::from_secs(5), Duration::from_millis(20), || {
            wire.log().contains("listening on")
        }),
        "tcpdump: {}",
        wire.log()
    );
    let n = 40;
    let s = d.spread(n)?;
    ensure!(s.values().sum::<usize>() == n, "failures: {s:?}");
    ensure!(
        wire.wait_exit(Duration::from_secs(5)).is_some(),
        "tcpdump saw fewer than 20 outer packets to b1: {}",
        wire.log()
    );
    let log = wire.log();
    let sources: std::collections::BTreeSet<&str> = log
        .lines()
        .filter_map(|l| l.split(" IP ").nth(1)?.split(" > ").next())
        .collect();
    println!("outer sources to b1: {sources:?}");
    ensure!(
        sources.iter().all(|a| a
            .parse::<Ipv4Addr>()
            .is_ok_and(|a| a.octets()[..3] == [198, 18, 4] && a.octets()[3] < 32)),
        "an outer source outside {TUNNEL_PREFIX}: {log}"
    );
    ensure!(sources.len() >= 2, "one outer source for every flow: {log}");
    Ok(())
}

#[test]
fn tunnel_survives_a_controller_restart_and_fails_over() -> Result<()> {
    if skip_unless_root() {
        return Ok(());
    }
    let mut d = direct::deploy("tunnel", direct::weighted("tunnel"))?;
    direct::restart_keeps_a_live_connection(&mut d)?;
    direct::failover_heals(&d, "web-3")?;
    direct::decap_down(&d)
}

/// Issue 22, item 7. Three backends run as namespaces of one host (one
/// bpffs), each with `xdplb decap --interface eth0` and the default pin
/// path: each keeps maps of its own, so 300 new connections over the VIP
/// are all served. Then an ordinary host on the backends' segment (b2, not
/// the gateway) sends b1 an IPIP packet carrying a SYN from a spoofed
/// client: decap drops it (`dropped_source` rises) and b1's kernel never
/// sees it; with `--allow-any` (what decap did before `--allow`) the same
/// packet reaches b1's listener, which answers it (a SYN-RECV socket).
#[test]
fn tunnel_backends_keep_their_own_pins_and_open_only_the_gateways_tunnels() -> Result<()> {
    if skip_unless_root() {
        return Ok(());
    }
    let d = direct::deploy("tunnel", PoolSpec::direct("tunnel", 3))?;
    let pins: Vec<_> = (0..3).map(|i| d.lab.decap_pin_path(i)).collect();
    for p in &pins {
        ensure!(
            p.exists(),
            "no decap pins at the default path {}",
            p.display()
        );
    }
    let s = d.spread(300)?;
    println!("300 connections over three decap backends: {s:?}");
    let served = |k: &str| s.get(k).copied().unwrap_or(0);
    let by_backend = ["web-1", "web-2", "web-3"].map(served);
    ensure!(
        by_backend.iter().sum::<usize>() == 300 && by_backend.iter().all(|&n| n > 0),
        "not all 300 served, or a backend served none: {s:?}"
    );

    let vip = d.pools[0].vip_addr();
    let IpAddr::V4(vip_ip) = vip.ip() else {
        bail!("an IPv4 pool");
    };
    let spoofed = SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 200), 40000);
    let frame = spoofed_ipip(&d, spoofed, SocketAddrV4::new(vip_ip, vip.port()))?;
    let dropped = |d: &Deployment| -> u64 {
        d.decap_stats(0)
            .map(|s| s["dropped_source"].as_u64().unwrap_or(0))
            .unwrap_or(0)
    };
    let answered = |d: &Deployment| -> Result<bool> {
        let ss = d.lab.exec_ok("b1", &["ss", "-Htn", "state", "syn-recv"])?;
        Ok(ss.contains(&spoofed.to_string()))
    };
    let before = dropped(&d);
    send_from_b2(&d, &frame)?;
    ensure!(
        wait_until(Duration::from_secs(5), Duration::from_millis(20), || {
            dropped(&d) > before
        }),
        "b1's decap did not count the spoofed tunnel: {}",
        d.decap_stats(0)?
    );
    // The drop is counted in XDP, before the stack: nothing can be on its
    // way to the listener any more.
    ensure!(!answered(&d)?, "b1 answered a SYN from a spoofed tunnel");
    println!("b1: {}", d.decap_stats(0)?);

    // Control: the same packet, decap opening any source (as it did before
    // --allow), is answered: the check above can fail.
    d.decap(0, &["--interface", BACKEND_IF, "--allow-any"])?;
    send_from_b2(&d, &frame)?;
    ensure!(
        wait_until(Duration::from_secs(5), Duration::from_millis(20), || {
            answered(&d).unwrap_or(false)
        }),
        "b1 did not answer the spoofed SYN even with --allow-any"
    );
    d.decap_up(0, BACKEND_IF)?;
    direct::decap_down(&d)
}

/// An Ethernet frame from b2 to b1: IPIP from b2's address to b1's, around
/// a TCP SYN from `src` to `dst`.
fn spoofed_ipip(d: &Deployment, src: SocketAddrV4, dst: SocketAddrV4) -> Result<Vec<u8>> {
    let b1 = parse_mac(&d.lab.mac("b1", BACKEND_IF)?)?;
    let b2 = parse_mac(&d.lab.mac("b2", BACKEND_IF)?)?;
    let mut inner = [0u8; TCP_FRAME_LEN];
    write_tcp_frame(&mut inner, b1, b2, src, dst, TCP_SYN, 0x1234_5678, 0);
    let ip = &inner[14..];
    let mut f = Vec::with_capacity(14 + 20 + ip.len());
    f.extend_from_slice(&b1);
    f.extend_from_slice(&b2);
    f.extend_from_slice(&0x0800u16.to_be_bytes());
    f.extend_from_slice(&[0x45, 0]);
    f.extend_from_slice(&((20 + ip.len()) as u16).to_be_bytes());
    f.extend_from_slice(&[0, 0, 0x40, 0, 64, 4, 0, 0]);
    f.extend_from_slice(&Lab::backend_addr(1).octets());
    f.extend_from_slice(&Lab::backend_addr(0).octets());
    let sum: u32 = f[14..34]
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c[1]])))
        .sum();
    let folded = (sum & 0xffff) + (sum >> 16);
    let check = !(((folded & 0xffff) + (folded >> 16)) as u16);
    f[24..26].copy_from_slice(&check.to_be_bytes());
    f.extend_from_slice(ip);
    Ok(f)
}

fn send_from_b2(d: &Deployment, frame: &[u8]) -> Result<()> {
    d.lab
        .run_in("b2", || RawSocket::open(BACKEND_IF)?.send(frame))?
}
