//! Operator drain: an established keep-alive connection keeps working
//! across the drain; new connections avoid the drained backend; undrain
//! brings it back. A drain survives a reload, and `xdplb down` (state file).

use std::{net::SocketAddr, time::Duration};

use anyhow::{ensure, Result};
use xdplb_tests::{
    deploy::{Deployment, PoolSpec},
    skip_unless_root, KeepAliveClient,
};

#[test]
fn drain_keeps_established_and_moves_new_connections() -> Result<()> {
    if skip_unless_root() {
        return Ok(());
    }
    let mut pool = PoolSpec::new(3, 0);
    pool.min_active = 1;
    let mut d = Deployment::new(vec![pool])?;
    d.start_daemon()?;
    let vip = SocketAddr::V4(d.pools[0].vip);
    d.lab.run_in("client", || -> Result<()> {
        let mut conn = KeepAliveClient::connect(vip)?;
        let (_, first) = conn.get("/")?;
        let target = first.trim().to_string();
        let out = d.ctl(&["drain", "web", &target])?;
        ensure!(out.contains(&target), "drain said: {out}");
        ensure!(d.backend_status("web", &target)?["state"] == "draining");
        for _ in 0..10 {
            let (s, body) = conn.get("/")?;
            ensure!(
                s == 200 && body.trim() == target,
                "keep-alive moved: {body}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    })??;
    let drained = d.status()?["pools"][0]["backends"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["state"] == "draining")
        .map(|b| b["name"].as_str().unwrap().to_string())
        .unwrap();
    let s = d.spread(30)?;
    ensure!(
        !s.contains_key(&drained) && s.values().sum::<usize>() == 30,
        "{s:?}"
    );

    // A reload keeps the drain.
    d.ctl(&["reload"])?;
    ensure!(d.backend_status("web", &drained)?["state"] == "draining");
    ensure!(d.backend_status("web", &drained)?["operator_drained"] == true);

    d.ctl(&["undrain", "web", &drained])?;
    d.wait_state(&drained, "state", "active", Duration::from_secs(2))?;
    let s = d.spread(40)?;
    ensure!(s.contains_key(&drained), "{s:?}");
    // Unknown names are refused with a clear error.
    let out = d.xdplb(&[
        "drain",
        "web",
        "nope",
        "--socket",
        &d.lab.socket_path().to_string_lossy(),
    ])?;
    ensure!(!out.status.success());
    ensure!(String::from_utf8_lossy(&out.stderr).contains("nope"));
    Ok(())
}

/// A drain is kept in `[control] state_file`: it survives `xdplb down`
/// (which takes the maps, and the drain flag in them, away) and a fresh
/// start; an undrain is kept the same way.
#[test]
fn a_drain_survives_down_and_a_fresh_start() -> Result<()> {
    if skip_unless_root() {
        return Ok(());
    }
    let mut pool = PoolSpec::new(2, 0);
    pool.min_active = 1;
    let mut d = Deployment::new(vec![pool])?;
    d.start_daemon()?;
    d.ctl(&["drain", "web", "web-2"])?;
    d.stop_daemon()?;
    let pin = d.lab.pin_path();
    let out = d.xdplb(&["down", "--pin-path", &pin.to_string_lossy()])?;
    ensure!(
        out.status.success() && !pin.exists(),
        "down: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    d.start_daemon()?;
    let b = d.backend_status("web", "web-2")?;
    ensure!(
        b["state"] == "draining" && b["operator_drained"] == true,
        "drain lost across down + start: {b}"
    );
    let s = d.spread(20)?;
    ensure!(s.get("web-1") == Some(&20), "{s:?}");

    d.ctl(&["undrain", "web", "web-2"])?;
    d.stop_daemon()?;
    d.start_daemon()?;
    d.wait_state("web-2", "state", "active", Duration::from_secs(2))?;
    ensure!(d.backend_status("web", "web-2")?["operator_drained"] == false);
    Ok(())
}
