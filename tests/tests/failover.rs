//! A primary dies: it is marked down within interval × fall + timeout,
//! new connections stop reaching it, and traffic heals within that bound
//! plus one controller beat (`xdplb::controller::TICK`). Then a warm spare covers a gap below `min_active`, and
//! steps back (draining, then standby) when the primary returns.

use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use xdplb_tests::{
    deploy::{Deployment, PoolSpec},
    http_get, skip_unless_root,
};

#[test]
fn killed_primary_is_detected_and_traffic_heals_within_the_bound() -> Result<()> {
    if skip_unless_root() {
        return Ok(());
    }
    let mut pool = PoolSpec::new(3, 0);
    pool.min_active = 1;
    let bound = pool.detection_bound();
    // The health verdict is written to the maps as it arrives; one beat
    // of the controller is the slack allowed for scheduling.
    let healed_by = bound + xdplb::controller::TICK;
    let mut d = Deployment::new(vec![pool])?;
    d.start_daemon()?;
    let before = d.spread(30)?;
    ensure!(
        before.len() == 3 && before.keys().all(|k| k.starts_with("web-")),
        "{before:?}"
    );

    let victim = d.pools[0].backend("web-2").lab_index;
    let vip = d.pools[0].vip;
    d.kill_server(victim);
    let killed = Instant::now();
    // Connect continuously; remember when the last attempt that failed or
    // reached the dead backend started.
    let attempts = d.lab.run_in("client", || {
        let mut v = Vec::new();
        while killed.elapsed() < bound + Duration::from_secs(3) {
            let started = killed.elapsed();
            let ok = matches!(http_get(std::net::SocketAddr::V4(vip), "/"), Ok((200, ref b)) if b.trim() != "web-2");
            v.push((started, ok));
            std::thread::sleep(Duration::from_millis(10));
        }
        v
    })?;
    let healed_at = attempts
        .iter()
        .filter(|(_, ok)| !ok)
        .map(|(t, _)| *t)
        .max()
        .unwrap_or_default();
    println!(
        "failover: {} attempts, last failure started {:?} after the kill (bound {:?} + one beat = {healed_by:?})",
        attempts.len(),
        healed_at,
        bound
    );
    ensure!(
        healed_at <= healed_by,
        "traffic healed only after {healed_at:?}; log:\n{}",
        d.daemon_log()
    );
    let tail_ok = attempts.iter().rev().take(20).all(|(_, ok)| *ok);
    ensure!(tail_ok, "connections still failing at the end");
    let b = d.backend_status("web", "web-2")?;
    ensure!(b["health"] == "down" && b["state"] == "down", "{b}");
    let after = d.spread(30)?;
    ensure!(
        !after.contains_key("web-2") && after.values().sum::<usize>() == 30,
        "{after:?}"
    );
    ensure!(after.keys().all(|k| k.starts_with("web-")), "{after:?}");
    Ok(())
}

#[test]
fn warm_spare_fills_the_gap_and_steps_back() -> Result<()> {
    if skip_unless_root() {
        return Ok(());
    }
    let pool = PoolSpec::new(2, 1);
    let bound = pool.detection_bound();
    let mut d = Deployment::new(vec![pool])?;
    d.start_daemon()?;
    ensure!(d.backend_status("web", "spare-1")?["state"] == "standby");
    let s = d.spread(20)?;
    ensure!(
        !s.contains_key("spare-1"),
        "a standby spare got traffic: {s:?}"
    );

    let web1 = d.pools[0].backend("web-1").lab_index;
    d.kill_server(web1);
    let t = d.wait_state("spare-1", "state", "active", bound + Duration::from_secs(2))?;
    println!("spare active {t:?} after the kill");
    let s = d.spread(30)?;
    ensure!(s.get("spare-1").copied().unwrap_or(0) > 0, "{s:?}");
    ensure!(
        !s.contains_key("web-1") && s.values().sum::<usize>() == 30,
        "{s:?}"
    );

    d.start_server(web1, "web-1")?;
    d.wait_state("web-1", "state", "active", Duration::from_secs(5))?;
    // The spare stops taking new flows at once, then finishes its own.
    let st = d.backend_status("web", "spare-1")?["state"].clone();
    ensure!(st == "draining" || st == "standby", "spare state {st}");
    let s = d.spread(20)?;
    ensure!(
        !s.contains_key("spare-1"),
        "spare still gets new flows: {s:?}"
    );
    d.wait_state("spare-1", "state", "standby", Duration::from_secs(10))?;
    Ok(())
}
