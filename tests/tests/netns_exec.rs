//! `ip netns exec` gives its command a private mount namespace with a fresh
//! `/sys`, whose bpffs (if any) dies with the process. xdplb started that
//! way must still pin where the host sees it: after SIGTERM the data plane
//! keeps forwarding, and `xdplb stats` and `down` run by another
//! `ip netns exec` find it.

use std::net::SocketAddr;

use anyhow::{ensure, Result};
use xdplb_tests::{
    deploy::{Deployment, PoolSpec},
    skip_unless_root, xdplb_bin, KeepAliveClient, Lab,
};

#[test]
fn pins_made_under_ip_netns_exec_outlive_the_controller() -> Result<()> {
    if skip_unless_root() {
        return Ok(());
    }
    let mut d = Deployment::new(vec![PoolSpec::new(2, 0)])?;
    d.start_daemon_ip_netns_exec()?;
    let pin = d.lab.pin_path();
    ensure!(
        pin.join("VIPS").exists(),
        "no pins in the host's bpffs at {}: {}",
        pin.display(),
        d.daemon_log()
    );
    let vip = SocketAddr::V4(d.pools[0].vip);
    let (mut conn, first) =
        d.lab
            .run_in("client", || -> Result<(KeepAliveClient, String)> {
                let mut c = KeepAliveClient::connect(vip)?;
                let (_, b) = c.get("/")?;
                Ok((c, b.trim().to_string()))
            })??;
    d.stop_daemon()?;

    // The controller is gone; its data plane is not.
    let (s, body) = conn.get("/")?;
    ensure!(s == 200 && body.trim() == first, "connection broke: {body}");
    let seen = d.spread(20)?;
    ensure!(
        seen.values().sum::<usize>() == 20 && seen.keys().all(|k| k.starts_with("web-")),
        "after SIGTERM: {seen:?}"
    );

    // Another `ip netns exec` sees the same pins.
    let bin = xdplb_bin()?;
    let bin = bin.to_string_lossy();
    let pin_s = pin.to_string_lossy();
    let out = d.lab.exec(
        d.lab.gw_ns(),
        &[
            bin.as_ref(),
            "stats",
            "--json",
            "--pin-path",
            pin_s.as_ref(),
        ],
    )?;
    ensure!(
        out.status.success(),
        "stats under ip netns exec: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stats: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    ensure!(
        stats["vips"][0]["pool"] == "web" && stats["vips"][0]["new_flows"].as_u64() >= Some(20),
        "{stats}"
    );
    let out = d.lab.exec(
        d.lab.gw_ns(),
        &[bin.as_ref(), "down", "--pin-path", pin_s.as_ref()],
    )?;
    ensure!(
        out.status.success(),
        "down under ip netns exec: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(!pin.exists(), "pins left after down");
    for iface in Lab::gw_ifaces() {
        let link = d
            .lab
            .exec_ok(d.lab.gw_ns(), &["ip", "-d", "link", "show", iface])?;
        ensure!(!link.contains("xdp"), "{iface} still has XDP after down");
    }
    Ok(())
}
