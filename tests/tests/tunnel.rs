//! `mode = "tunnel"`: the gateway encapsulates requests in IPIP from
//! `tunnel_source` to the backend; each backend runs `xdplb decap
//! --interface eth0` (this kernel has no ipip device), holds the VIP on
//! loopback and answers the clients through a router, never through the
//! gateway. Spread by weight, drain, a multi-MB download with the gateway's
//! reply counters at zero and decap's own counters moving, a controller
//! restart with a live connection, failover, and `decap --down` leaving no
//! program or pin behind (see `direct/mod.rs`).

mod direct;

use anyhow::{ensure, Result};
use xdplb_tests::{addr::BACKEND_IF, skip_unless_root};

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
