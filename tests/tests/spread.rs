//! New connections spread over the active primaries in proportion to
//! weight; warm spares get none. Counters and status agree with traffic.

use anyhow::{ensure, Result};
use xdplb_tests::{
    deploy::{spread_flows, Deployment, PoolSpec, SPREAD_TOLERANCE},
    skip_unless_root,
};

#[test]
fn connections_follow_weights_and_spares_stay_idle() -> Result<()> {
    if skip_unless_root() {
        return Ok(());
    }
    let mut pool = PoolSpec::new(3, 1);
    pool.backends[0].weight = 100;
    pool.backends[1].weight = 200;
    pool.backends[2].weight = 300;
    let mut d = Deployment::new(vec![pool])?;
    d.start_daemon()?;
    // Enough fresh connections that a correct build fails this less than
    // once in 10,000 runs (see `spread_flows`).
    let n = spread_flows(3, SPREAD_TOLERANCE);
    let s = d.spread(n)?;
    ensure!(s.values().sum::<usize>() == n, "failures: {s:?}");
    ensure!(!s.contains_key("spare-1"), "spare got traffic: {s:?}");
    let share = |k: &str| s.get(k).copied().unwrap_or(0) as f64 / n as f64;
    // Expected 1/6, 2/6, 3/6 within SPREAD_TOLERANCE.
    for (k, want) in [
        ("web-1", 1.0 / 6.0),
        ("web-2", 2.0 / 6.0),
        ("web-3", 3.0 / 6.0),
    ] {
        ensure!(
            (share(k) - want).abs() < SPREAD_TOLERANCE,
            "{k}: {:.3} of {n} new connections vs {want:.3} ± {SPREAD_TOLERANCE} ({s:?})",
            share(k)
        );
    }
    let stats = d.stats()?;
    let vip = &stats["vips"][0];
    ensure!(vip["pool"] == "web", "{stats}");
    ensure!(
        vip["new_flows"].as_u64().unwrap_or(0) >= n as u64,
        "{stats}"
    );
    let backends = stats["backends"].as_array().unwrap();
    // Every backend of the pool, the spare too: a loop over none checks
    // nothing.
    ensure!(
        backends.len() == 4,
        "xdplb stats lists {} backends, the pool has 4: {stats}",
        backends.len()
    );
    for b in backends {
        let name = b["name"].as_str().unwrap();
        let got = s.get(name).copied().unwrap_or(0) as u64;
        ensure!(b["new_flows"].as_u64().unwrap_or(0) >= got, "{name}: {b}");
    }
    let status = d.status()?;
    ensure!(status["pools"][0]["vip"] == d.pools[0].vip.to_string());
    let listed = status["pools"][0]["backends"].as_array().unwrap();
    ensure!(
        listed.len() == 4,
        "xdplb status lists {} backends, the pool has 4: {status}",
        listed.len()
    );
    for b in listed {
        for field in [
            "name", "addr", "role", "health", "state", "weight", "load", "flows",
        ] {
            ensure!(!b[field].is_null(), "status lacks {field}: {b}");
        }
    }
    Ok(())
}
