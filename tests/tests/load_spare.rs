//! Load-driven spares: agents (real `xdplb agent` processes) report high
//! load → a spare is activated after the hold time, with its weight
//! ramping up (slow start); load falls → it drains back to standby.

use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use xdplb_tests::{
    deploy::{Deployment, LoadSpec, PoolSpec},
    skip_unless_root, wait_until,
};

#[test]
fn high_load_activates_a_spare_and_low_load_returns_it() -> Result<()> {
    if skip_unless_root() {
        return Ok(());
    }
    let mut pool = PoolSpec::new(2, 1);
    pool.load = Some(LoadSpec {
        interval_ms: 200,
        high: 0.8,
        low: 0.3,
        scale_up_after_ms: 800,
        scale_down_after_ms: 1000,
        slow_start_ms: 3000,
    });
    let mut d = Deployment::new(vec![pool])?;
    d.start_daemon()?;
    ensure!(d.backend_status("web", "spare-1")?["state"] == "standby");
    // The agents' scores arrive and the busier backend gets less weight.
    d.set_load(0, 0.6)?;
    let ok = wait_until(Duration::from_secs(5), Duration::from_millis(50), || {
        let w1 = d
            .backend_status("web", "web-1")
            .map(|b| b["weight"].as_u64().unwrap_or(0));
        let w2 = d
            .backend_status("web", "web-2")
            .map(|b| b["weight"].as_u64().unwrap_or(0));
        matches!((w1, w2), (Ok(a), Ok(b)) if a > 0 && a < b)
    });
    ensure!(
        ok,
        "busier backend does not get less weight: {}",
        d.status()?
    );

    for i in 0..3 {
        d.set_load(i, 0.95)?;
    }
    let high_at = Instant::now();
    d.wait_state("spare-1", "state", "active", Duration::from_secs(6))?;
    let after = high_at.elapsed();
    ensure!(
        after >= Duration::from_millis(800),
        "spare activated before the hold: {after:?}"
    );
    // Slow start: the first weight seen is a fraction of the later one,
    // and so is the spare's share of new connections.
    let weight = || -> Result<u64> {
        Ok(d.backend_status("web", "spare-1")?["weight"]
            .as_u64()
            .unwrap_or(0))
    };
    let early = weight()?;
    let early_share = d.spread(60)?.get("spare-1").copied().unwrap_or(0);
    // The ramp is over when the spare weighs what web-1 does: the same
    // configured weight, the same reported load.
    let ramped = wait_until(Duration::from_secs(6), Duration::from_millis(50), || {
        let w1 = d
            .backend_status("web", "web-1")
            .map(|b| b["weight"].as_u64().unwrap_or(0));
        matches!((weight(), w1), (Ok(s), Ok(w)) if s > 0 && s == w)
    });
    ensure!(
        ramped,
        "the spare's slow start (3 s) never reached web-1's weight: {}",
        d.status()?
    );
    let late = weight()?;
    let s = d.spread(60)?;
    let late_share = s.get("spare-1").copied().unwrap_or(0);
    println!(
        "slow start: weight {early} → {late}; spare's share of 60 new connections {early_share} → {late_share}"
    );
    ensure!(
        early > 0 && early * 10 < late * 6,
        "no visible ramp: {early} → {late}"
    );
    ensure!(late_share > 0, "{s:?}");
    ensure!(
        early_share < late_share,
        "share did not ramp: {early_share} → {late_share}"
    );

    for i in 0..3 {
        d.set_load(i, 0.1)?;
    }
    d.wait_state("spare-1", "state", "standby", Duration::from_secs(10))?;
    let s = d.spread(20)?;
    ensure!(!s.contains_key("spare-1"), "{s:?}");
    Ok(())
}
