//! IPv6 pools in `mode = "dsr"` and `mode = "tunnel"`, on the dual-stack
//! direct-return lab: VIP 2001:2:0:2::10 port 8080, backends
//! 2001:2:0:1::11.. holding the VIP on loopback (`/128`) and answering the
//! client 2001:2::2 through the router (2001:2:0:1::254), never through
//! the gateway. dsr rewrites only the destination MAC; tunnel wraps the
//! request in IPv6-in-IPv6 from the IPv6 one of the two `tunnel_source`
//! addresses (198.18.1.1 and 2001:2:0:1::1), and each backend's `xdplb
//! decap` strips it. Spread by weight 1:2:3, a drain keeping an established
//! connection, a multi-MB download with the gateway's reply counters at
//! zero — the scenarios of `dsr.rs` and `tunnel.rs` (see `direct/mod.rs`),
//! in the other family.

mod direct;

use anyhow::{ensure, Result};
use xdplb_tests::{
    addr::{v6_of, BACKEND_IF, GW_BACKEND_ADDR},
    skip_unless_root, Lab,
};

fn pool(mode: &str) -> xdplb_tests::deploy::PoolSpec {
    direct::weighted(mode).in_ipv6()
}

#[test]
fn ipv6_dsr_spreads_drains_and_replies_bypass_the_gateway() -> Result<()> {
    if skip_unless_root() {
        return Ok(());
    }
    let d = direct::deploy("dsr", pool("dsr"))?;
    direct::backends_are_configured(&d)?;
    direct::spread_follows_weights(&d)?;
    direct::drain_keeps_established(&d)?;
    direct::replies_bypass_the_gateway(&d, "dsr_sent")?;
    Ok(())
}

#[test]
fn ipv6_tunnel_spreads_drains_and_replies_bypass_the_gateway() -> Result<()> {
    if skip_unless_root() {
        return Ok(());
    }
    let d = direct::deploy("tunnel", pool("tunnel"))?;
    direct::backends_are_configured(&d)?;
    // What tcpdump shows: IPv6-in-IPv6 (next header 41) on the wire to b1,
    // from the IPv6 tunnel source; on b1's eth0 only the inner packet
    // (decap's XDP program runs before packet taps).
    let vip = d.pools[0].vip_addr().ip();
    let source = v6_of(GW_BACKEND_ADDR);
    let b1 = Lab::backend_addr6(0);
    let wire = direct::capture(&d, "sw", "to-b1", "ip6 proto 41")?;
    let host = direct::capture(&d, "b1", BACKEND_IF, &format!("ip6 dst host {vip}"))?;
    direct::spread_follows_weights(&d)?;
    let wire = direct::finish(wire)?;
    let host = direct::finish(host)?;
    println!("tcpdump on the switch port to b1:\n{wire}tcpdump on b1 eth0:\n{host}");
    let client = Lab::client_addr6(0);
    ensure!(
        wire.contains(&format!("IP6 {source} > {b1}: IP6 {client}.")),
        "no IPv6-in-IPv6 from the tunnel source on the wire: {wire}"
    );
    ensure!(
        host.contains(&format!("> {vip}.8080: ")) && !host.contains(&format!("IP6 {source} >")),
        "b1 does not see the inner packet: {host}"
    );
    direct::drain_keeps_established(&d)?;
    direct::replies_bypass_the_gateway(&d, "tunnel_sent")?;
    direct::every_backend_decapsulated(&d)?;
    direct::decap_down(&d)
}
