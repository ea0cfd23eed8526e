//! Controller restart (SIGTERM, start again): established connections
//! survive, new ones keep flowing while it is down, and `xdplb down`
//! afterwards leaves no program attached and no pin behind.

use std::{net::SocketAddr, time::Duration};

use anyhow::{ensure, Result};
use xdplb_tests::{
    deploy::{Deployment, PoolSpec},
    skip_unless_root, KeepAliveClient, Lab,
};

#[test]
fn restart_keeps_connections_and_down_cleans_up() -> Result<()> {
    if skip_unless_root() {
        return Ok(());
    }
    let mut d = Deployment::new(vec![PoolSpec::new(3, 0)])?;
    d.start_daemon()?;
    let vip = SocketAddr::V4(d.pools[0].vip);
    let (mut conn, first) =
        d.lab
            .run_in("client", || -> Result<(KeepAliveClient, String)> {
                let mut c = KeepAliveClient::connect(vip)?;
                let (_, b) = c.get("/")?;
                Ok((c, b.trim().to_string()))
            })??;

    d.stop_daemon()?;
    // Controller gone: the pinned program still forwards, old and new.
    let (s, body) = conn.get("/")?;
    ensure!(
        s == 200 && body.trim() == first,
        "established connection broke: {body}"
    );
    let s = d.spread(15)?;
    ensure!(
        s.values().sum::<usize>() == 15 && s.keys().all(|k| k.starts_with("web-")),
        "while down: {s:?}"
    );
    let stats = d.stats()?;
    ensure!(
        stats["global"]["rx_packets"].as_u64().unwrap_or(0) > 0,
        "{stats}"
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
    let s = d.spread(15)?;
    ensure!(s.values().sum::<usize>() == 15, "{s:?}");
    drop(conn);

    d.stop_daemon()?;
    let pin = d.lab.pin_path();
    let out = d.xdplb(&["down", "--pin-path", &pin.to_string_lossy()])?;
    ensure!(
        out.status.success(),
        "down: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(!pin.exists(), "pins left at {}", pin.display());
    for iface in Lab::gw_ifaces() {
        let link = d
            .lab
            .exec_ok(d.lab.gw_ns(), &["ip", "-d", "link", "show", iface])?;
        ensure!(!link.contains("xdp"), "{iface} still has XDP: {link}");
    }
    Ok(())
}
