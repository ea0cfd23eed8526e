//! Path-MTU discovery through the VIP: a router between the client and the
//! gateway has a 1280-byte link toward the client. The backend sends
//! full-size (1500-byte, DF) segments; the router answers them with ICMP
//! fragmentation-needed addressed to the VIP (the segments' source after
//! reverse NAT), and xdplb must steer that ICMP to the backend that owns
//! the flow, translated. Without it the transfer stalls for good.

use std::{net::SocketAddr, time::Duration};

use anyhow::{ensure, Context, Result};
use xdplb_tests::{
    deploy::{Deployment, PoolSpec},
    skip_unless_root, Lab,
};

/// The client-side link's MTU (IPv6's minimum, a common tunnel MTU).
const CLIENT_LINK_MTU: u32 = 1280;
/// The response: 1 MiB, hundreds of full-size segments.
const BODY: usize = 1 << 20;
/// The whole transfer must finish within this (it takes well under a
/// second when PMTU discovery works; a black hole never finishes).
const DEADLINE: Duration = Duration::from_secs(10);

#[test]
fn a_large_response_crosses_a_small_mtu_link_through_the_vip() -> Result<()> {
    if skip_unless_root() {
        return Ok(());
    }
    let lab = Lab::builder().router_mtu(CLIENT_LINK_MTU);
    let mut d = Deployment::on(lab, vec![PoolSpec::new(1, 0)])?;
    d.start_daemon()?;
    d.wait_state("web-1", "state", "active", Duration::from_secs(5))?;
    let vip = SocketAddr::V4(d.pools[0].vip);

    // The backend has not learned anything about the client's path yet.
    let client = Lab::client_addr(0).to_string();
    let route = d.lab.exec_ok("b1", &["ip", "route", "get", &client])?;
    ensure!(!route.contains("mtu"), "{route}");

    let took = d
        .download(vip, BODY, DEADLINE)
        .with_context(|| format!("over a {CLIENT_LINK_MTU}-byte link"))?;
    println!("path MTU: {BODY} bytes through the VIP in {took:?}");

    // The backend learned the path MTU: the router's ICMP reached it.
    let route = d.lab.exec_ok("b1", &["ip", "route", "get", &client])?;
    ensure!(
        route.contains(&format!("mtu {CLIENT_LINK_MTU}")),
        "the backend never learned the path MTU: {route}"
    );
    Ok(())
}
