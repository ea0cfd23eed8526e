//! A pool with no usable backend fails fast and visibly: with the default
//! `on_empty = "reject"` a new connection to the VIP is refused (a RST from
//! the VIP) within 100 ms, counted as `rejected`, and `xdplb status` shows
//! the pool empty; with `on_empty = "drop"` the SYN is dropped and the
//! connect times out.

use std::{
    io::ErrorKind,
    net::{SocketAddr, TcpStream},
    time::{Duration, Instant},
};

use anyhow::{ensure, Result};
use xdplb_tests::{
    deploy::{Deployment, PoolSpec},
    http_get, skip_unless_root, wait_until,
};

/// The contract: a client learns of an empty pool within this.
const REFUSED_WITHIN: Duration = Duration::from_millis(100);
/// Connect timeout of the probing client (a dropped SYN waits this long).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Connection attempts per check.
const ATTEMPTS: usize = 5;

/// `ATTEMPTS` connects to the VIP from the client: (elapsed, error kind or
/// None when it connected).
fn connect_attempts(d: &Deployment) -> Result<Vec<(Duration, Option<ErrorKind>)>> {
    let vip = SocketAddr::V4(d.pools[0].vip);
    d.lab.run_in("client", || {
        (0..ATTEMPTS)
            .map(|_| {
                let t = Instant::now();
                let r = TcpStream::connect_timeout(&vip, CONNECT_TIMEOUT);
                (t.elapsed(), r.err().map(|e| e.kind()))
            })
            .collect()
    })
}

/// Kills every backend and waits until the controller reports the pool
/// empty.
fn empty_the_pool(d: &Deployment) -> Result<()> {
    let pool = d.pools[0].clone();
    for b in &pool.backends {
        d.kill_server(b.lab_index);
    }
    let within = pool.detection_bound() + Duration::from_secs(2);
    let empty = wait_until(within, Duration::from_millis(20), || {
        d.pool_status(&pool.name)
            .is_ok_and(|p| p["empty"] == serde_json::Value::Bool(true))
    });
    ensure!(
        empty,
        "pool never shown empty within {within:?}: {}\n{}",
        d.status().map(|s| s.to_string()).unwrap_or_default(),
        d.daemon_log()
    );
    Ok(())
}

fn vip_counter(stats: &serde_json::Value, field: &str) -> u64 {
    stats["vips"][0][field].as_u64().unwrap_or(0)
}

#[test]
fn an_empty_pool_refuses_new_connections_at_once() -> Result<()> {
    if skip_unless_root() {
        return Ok(());
    }
    let mut d = Deployment::new(vec![PoolSpec::new(2, 0)])?;
    d.start_daemon()?;
    ensure!(d.spread(4)?.keys().all(|k| k.starts_with("web-")));
    let st = d.pool_status("web")?;
    ensure!(st["empty"] == false && st["on_empty"] == "reject", "{st}");

    empty_the_pool(&d)?;
    let attempts = connect_attempts(&d)?;
    let slowest = attempts.iter().map(|(t, _)| *t).max().unwrap_or_default();
    println!("empty pool, reject: connect attempts {attempts:?} (slowest {slowest:?})");
    let stats = d.stats()?;
    ensure!(
        attempts
            .iter()
            .all(|(_, e)| *e == Some(ErrorKind::ConnectionRefused)),
        "every connect must be refused: {attempts:?}; the program answered {} packets \
         (if it answered but the client saw nothing, the answers were lost on the way: a \
         veth delivers XDP_TX frames only to a peer running an XDP program, GRO is not \
         enough); stats {stats}",
        stats["global"]["answered"]
    );
    ensure!(
        slowest < REFUSED_WITHIN,
        "refused only after {slowest:?} (want < {REFUSED_WITHIN:?})"
    );

    let stats = d.stats()?;
    ensure!(
        vip_counter(&stats, "rejected") >= ATTEMPTS as u64,
        "rejected must count the {ATTEMPTS} refused SYNs: {stats}"
    );
    let human = d.ctl(&["status"])?;
    ensure!(human.contains("EMPTY"), "{human}");
    let human = String::from_utf8_lossy(
        &d.xdplb(&["stats", "--pin-path", &d.lab.pin_path().to_string_lossy()])?
            .stdout,
    )
    .into_owned();
    ensure!(human.contains("REJECTED"), "{human}");
    let metrics = d.scrape()?;
    let line = metrics
        .lines()
        .find(|l| l.starts_with("xdplb_vip_rejected_total{") && l.contains("pool=\"web\""))
        .unwrap_or_default();
    let value: f64 = line
        .rsplit_once(' ')
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0.0);
    ensure!(value >= ATTEMPTS as f64, "metrics: {line:?}");

    // A backend coming back ends it.
    d.start_server(0, "web-1")?;
    d.wait_state("web-1", "state", "active", Duration::from_secs(5))?;
    let ok = wait_until(Duration::from_secs(2), Duration::from_millis(20), || {
        d.pool_status("web").is_ok_and(|p| p["empty"] == false)
    });
    ensure!(ok, "pool still empty: {}", d.status()?);
    let vip = SocketAddr::V4(d.pools[0].vip);
    let (status, body) = d.lab.run_in("client", || http_get(vip, "/"))??;
    ensure!(status == 200 && body == "web-1\n", "{status} {body:?}");
    Ok(())
}

#[test]
fn with_on_empty_drop_the_connect_times_out() -> Result<()> {
    if skip_unless_root() {
        return Ok(());
    }
    let mut pool = PoolSpec::new(1, 0);
    pool.on_empty = Some("drop".into());
    let mut d = Deployment::new(vec![pool])?;
    d.start_daemon()?;
    ensure!(d.pool_status("web")?["on_empty"] == "drop");
    empty_the_pool(&d)?;
    let before = d.stats()?;
    let attempts = connect_attempts(&d)?;
    println!("empty pool, drop: connect attempts {attempts:?}");
    ensure!(
        attempts
            .iter()
            .all(|(t, e)| *e == Some(ErrorKind::TimedOut) && *t >= CONNECT_TIMEOUT),
        "every connect must time out: {attempts:?}"
    );
    let after = d.stats()?;
    ensure!(
        vip_counter(&after, "rejected") == 0,
        "nothing rejected: {after}"
    );
    let dropped = |s: &serde_json::Value| s["global"]["dropped"].as_u64().unwrap_or(0);
    ensure!(
        dropped(&after) >= dropped(&before) + ATTEMPTS as u64,
        "the SYNs are counted as dropped: before {before}, after {after}"
    );
    let human = d.ctl(&["status"])?;
    ensure!(human.contains("EMPTY"), "{human}");
    Ok(())
}
