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
        ensure!(!has_xdp(&d, iface)?, "{iface} still has XDP after down");
    }
    Ok(())
}

#[test]
fn an_interface_dropped_from_the_config_is_detached_on_restart() -> Result<()> {
    if skip_unless_root() {
        return Ok(());
    }
    let mut d = Deployment::new(vec![PoolSpec::new(1, 0)])?;
    let gw = d.lab.gw_ns().to_string();
    d.lab.exec_ok(
        &gw,
        &[
            "ip", "link", "add", "gwx", "type", "veth", "peer", "name", "gwy",
        ],
    )?;
    d.lab.exec_ok(&gw, &["ip", "link", "set", "gwx", "up"])?;
    let two = std::fs::read_to_string(&d.config_path)?;
    let three = two.replace(
        "interfaces = [\"gwc\", \"gwb\"]",
        "interfaces = [\"gwc\", \"gwb\", \"gwx\"]",
    );
    ensure!(three != two);
    std::fs::write(&d.config_path, &three)?;
    d.start_daemon()?;
    ensure!(has_xdp(&d, "gwx")?, "gwx not attached");
    d.stop_daemon()?;
    std::fs::write(&d.config_path, &two)?;
    d.start_daemon()?;
    ensure!(
        !has_xdp(&d, "gwx")?,
        "gwx still attached after it left the config"
    );
    ensure!(has_xdp(&d, "gwc")? && has_xdp(&d, "gwb")?);
    ensure!(!d.lab.pin_path().join("link_gwx").exists());
    let s = d.spread(5)?;
    ensure!(s.values().sum::<usize>() == 5, "{s:?}");
    Ok(())
}

fn has_xdp(d: &Deployment, iface: &str) -> Result<bool> {
    Ok(d.lab
        .exec_ok(d.lab.gw_ns(), &["ip", "-d", "link", "show", iface])?
        .contains("xdp"))
}
