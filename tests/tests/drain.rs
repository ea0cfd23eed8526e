//! Operator drain: an established keep-alive connection keeps working
//! across the drain; new connections avoid the drained backend; undrain
//! brings it back. A drain survives a reload, and `xdplb down` (state file).
//! Maintenance (`xdplb maint`) likewise, and it stops the health probes.

use std::{net::SocketAddr, time::Duration};

use anyhow::{ensure, Result};
use xdplb_tests::{
    deploy::{Deployment, PoolSpec, BACKEND_PORT},
    http_get, skip_unless_root, KeepAliveClient, Lab,
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

/// `/healthz` requests lab backend `i` has served so far.
fn probes_seen(d: &Deployment, i: usize) -> Result<u64> {
    let addr = SocketAddr::from((Lab::backend_addr(i), BACKEND_PORT));
    let (status, body) = d
        .lab
        .run_in(d.lab.backend_ns(i), || http_get(addr, "/healthz/count"))??;
    ensure!(status == 200, "/healthz/count: {status}");
    Ok(body.trim().parse()?)
}

/// `xdplb maint` (HAProxy's MAINT): the backend is no longer probed (it
/// sees no health request), takes no new connection, and an established
/// keep-alive connection to it keeps working; `xdplb ready` brings the
/// probes and the new connections back.
#[test]
fn maint_stops_probes_and_new_flows_but_not_established_ones() -> Result<()> {
    if skip_unless_root() {
        return Ok(());
    }
    let mut pool = PoolSpec::new(3, 0);
    pool.min_active = 1;
    let interval = Duration::from_millis(pool.interval_ms);
    let mut d = Deployment::new(vec![pool])?;
    d.start_daemon()?;
    let vip = SocketAddr::V4(d.pools[0].vip);
    let mut conn = d.lab.run_in("client", || KeepAliveClient::connect(vip))??;
    let (_, first) = d.lab.run_in("client", || conn.get("/"))??;
    let target = first.trim().to_string();
    let index = d.pools[0].backend(&target).lab_index;
    ensure!(probes_seen(&d, index)? > 0, "{target} was never probed");

    let out = d.ctl(&["maint", "web", &target])?;
    ensure!(
        out.trim() == format!("web/{target} in maintenance"),
        "maint said: {out}"
    );
    let b = d.backend_status("web", &target)?;
    ensure!(
        b["state"] == "draining" && b["admin_state"] == "maint" && b["admin_set_by"] == "operator",
        "{b}"
    );
    // A probe already in flight may land; after one interval none may.
    std::thread::sleep(interval + Duration::from_millis(100));
    let before = probes_seen(&d, index)?;
    // Five intervals of the established connection working, on the same
    // backend, while the probes stay away.
    for _ in 0..25 {
        let (s, body) = d.lab.run_in("client", || conn.get("/"))??;
        ensure!(
            s == 200 && body.trim() == target,
            "keep-alive moved: {body}"
        );
        std::thread::sleep(interval / 5);
    }
    let after = probes_seen(&d, index)?;
    ensure!(
        after == before,
        "{target} was probed {} times in maintenance",
        after - before
    );
    let s = d.spread(30)?;
    ensure!(
        !s.contains_key(&target) && s.values().sum::<usize>() == 30,
        "new connections reached {target} in maintenance: {s:?}"
    );
    // Kept across a reload.
    d.ctl(&["reload"])?;
    ensure!(d.backend_status("web", &target)?["admin_state"] == "maint");

    let out = d.ctl(&["ready", "web", &target])?;
    ensure!(
        out.trim() == format!("web/{target} ready"),
        "ready said: {out}"
    );
    d.wait_state(&target, "state", "active", Duration::from_secs(3))?;
    ensure!(
        probes_seen(&d, index)? > after,
        "{target}: probes did not resume"
    );
    let s = d.spread(40)?;
    ensure!(s.contains_key(&target), "{s:?}");
    Ok(())
}
