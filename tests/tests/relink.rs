//! An interface deleted and created again under a running controller (a
//! veth re-added here; a rebuilt VLAN or bond in real life) gets the
//! program back as soon as it exists again, and status says the data
//! plane is detached from it meanwhile.

use std::time::Duration;

use anyhow::{ensure, Result};
use xdplb_tests::{
    deploy::{Deployment, PoolSpec},
    skip_unless_root, wait_until, Lab,
};

#[test]
fn an_interface_deleted_and_created_again_gets_the_program_back() -> Result<()> {
    if skip_unless_root() {
        return Ok(());
    }
    let mut d = Deployment::new(vec![PoolSpec::new(2, 0)])?;
    d.start_daemon()?;
    let served: usize = d.spread(20)?.values().sum();
    ensure!(served == 20, "{served} of 20 served before");
    let detached = |d: &Deployment| {
        d.status()
            .map(|s| s["detached"].clone())
            .unwrap_or_default()
    };
    ensure!(
        detached(&d).is_null(),
        "detached at start: {}",
        detached(&d)
    );

    // The client-side interface goes (with its veth peer).
    d.lab.exec_ok("gw", &["ip", "link", "del", "gwc"])?;
    let seen = wait_until(Duration::from_secs(5), Duration::from_millis(50), || {
        detached(&d) == serde_json::json!(["gwc"])
    });
    ensure!(seen, "status while gwc is gone: {}", d.status()?);
    let text = d.ctl(&["status"])?;
    ensure!(text.contains("DATA PLANE DETACHED from gwc"), "{text}");

    // And comes back, made as the lab made it.
    let client = d.lab.client_ns(0).to_string();
    let gw_addr = format!("{}/24", xdplb_tests::addr::GW_CLIENT_ADDR);
    let cl_addr = format!("{}/24", Lab::client_addr(0));
    let via = xdplb_tests::addr::GW_CLIENT_ADDR.to_string();
    let peer = [
        "ip", "link", "add", "gwc", "type", "veth", "peer", "name", "cl0", "netns",
    ];
    let mut add: Vec<&str> = peer.to_vec();
    add.push(&client);
    d.lab.exec_ok("gw", &add)?;
    d.lab
        .exec_ok("gw", &["ip", "addr", "add", &gw_addr, "dev", "gwc"])?;
    d.lab.exec_ok("gw", &["ip", "link", "set", "gwc", "up"])?;
    d.lab
        .exec_ok("c1", &["ip", "addr", "add", &cl_addr, "dev", "cl0"])?;
    d.lab.exec_ok("c1", &["ip", "link", "set", "cl0", "up"])?;
    d.lab
        .exec_ok("c1", &["ip", "route", "add", "default", "via", &via])?;
    d.lab
        .exec_ok("c1", &["ethtool", "-K", "cl0", "gro", "on"])?;

    let back = wait_until(Duration::from_secs(5), Duration::from_millis(50), || {
        detached(&d).is_null()
    });
    ensure!(back, "status after gwc is back: {}", d.status()?);
    let link = d.lab.exec_ok("gw", &["ip", "link", "show", "gwc"])?;
    ensure!(link.contains("xdp"), "no program on the new gwc: {link}");
    // The VIP has no address anywhere: only the program answers for it.
    let served: usize = d.spread(20)?.values().sum();
    ensure!(served == 20, "{served} of 20 served after");
    Ok(())
}
