//! `mode = "tunnel"`: the gateway encapsulates requests in IPIP from
//! `tunnel_source` to the backend; each backend runs `xdplb decap
//! --interface eth0` (this kernel has no ipip device), holds the VIP on
//! loopback and answers the clients through a router, never through the
//! gateway. Spread by weight, drain, a multi-MB download with the gateway's
//! reply counters at zero and decap's own counters moving, a controller
//! restart with a live connection, failover, and `decap --down` leaving no
//! program or pin behind (see `direct/mod.rs`).

mod direct;

use std::time::Duration;

use anyhow::{ensure, Result};
use xdplb_tests::{addr::BACKEND_IF, deploy::Deployment, skip_unless_root, wait_until, LabChild};

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
    let wire = capture(&d, "sw", "to-b1", "ip proto 4")?;
    let host = capture(&d, "b1", BACKEND_IF, &format!("dst host {vip}"))?;
    direct::spread_follows_weights(&d)?;
    let wire = finish(wire)?;
    let host = finish(host)?;
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
    decap_down(&d)
}

#[test]
fn tunnel_survives_a_controller_restart_and_fails_over() -> Result<()> {
    if skip_unless_root() {
        return Ok(());
    }
    let mut d = direct::deploy("tunnel", direct::weighted("tunnel"))?;
    direct::restart_keeps_a_live_connection(&mut d)?;
    direct::failover_heals(&d, "web-3")?;
    decap_down(&d)
}

/// tcpdump of two packets matching `filter` on `iface` in `ns`, started
/// and listening.
fn capture(d: &Deployment, ns: &str, iface: &str, filter: &str) -> Result<LabChild> {
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
fn finish(c: LabChild) -> Result<String> {
    ensure!(
        c.wait_exit(Duration::from_secs(5)).is_some(),
        "tcpdump saw fewer than 2 packets: {}",
        c.log()
    );
    Ok(c.log()
        .lines()
        .filter(|l| l.contains(" IP "))
        .map(|l| format!("  {l}\n"))
        .collect())
}

/// `xdplb decap --down` on every backend: no XDP program left on eth0, no
/// pin left under the lab's decap pin path.
fn decap_down(d: &Deployment) -> Result<()> {
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
