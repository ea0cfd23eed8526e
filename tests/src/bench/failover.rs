//! Failover time: a primary's server is SIGKILLed while the client opens a
//! fresh connection every [`ATTEMPT_GAP`]; the failover time is when the
//! last attempt that failed (or reached the dead backend) ended. The server
//! is restarted and must be active again before the next kill.
//!
//! Pool: 3 primaries running `lab-backend`, HTTP health on `/healthz`,
//! interval 200 ms, timeout 100 ms, fall 2 — so the bound is
//! interval × fall + timeout = 500 ms.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde_json::{json, Value};
use xdplb_tests::{
    deploy::{render_config, Deployment, PoolSpec},
    http_get,
};

use crate::sys;

/// Pause between two client attempts.
const ATTEMPT_GAP: Duration = Duration::from_millis(5);
/// The run of clean attempts that ends a measurement once past the bound.
const CLEAN_TAIL: Duration = Duration::from_millis(1000);
/// Longest a measurement watches after a kill.
const WATCH_LIMIT: Duration = Duration::from_secs(8);

pub struct FailoverOpts {
    pub kills: usize,
}

/// One kill: when traffic was whole again, and how many attempts failed.
struct Heal {
    healed_ms: f64,
    failed: usize,
    attempts: usize,
}

fn watch(d: &Deployment, victim_name: &str, bound: Duration) -> Result<Heal> {
    let vip = SocketAddr::V4(d.pools[0].vip);
    let killed = Instant::now();
    d.lab.run_in("client", || {
        let mut last_bad: Option<Duration> = None;
        let mut failed = 0;
        let mut attempts = 0;
        while killed.elapsed() < WATCH_LIMIT {
            let ok = matches!(http_get(vip, "/"), Ok((200, ref b)) if b.trim() != victim_name);
            attempts += 1;
            let now = killed.elapsed();
            if !ok {
                failed += 1;
                last_bad = Some(now);
            }
            let clean_since = last_bad.unwrap_or_default();
            if now > bound && now - clean_since >= CLEAN_TAIL {
                break;
            }
            std::thread::sleep(ATTEMPT_GAP);
        }
        Heal {
            healed_ms: last_bad.unwrap_or_default().as_secs_f64() * 1e3,
            failed,
            attempts,
        }
    })
}

pub fn run(d: &mut Deployment, o: &FailoverOpts) -> Result<Value> {
    let mut pool = PoolSpec::new(3, 0);
    pool.min_active = 1;
    let bound = pool.detection_bound();
    for b in pool.backends.clone() {
        d.start_server(b.lab_index, &b.name)?;
    }
    std::fs::write(
        &d.config_path,
        render_config(&d.lab, std::slice::from_ref(&pool)),
    )?;
    d.pools = vec![pool];
    let result = kills(d, o, bound);
    let _ = d.stop_daemon();
    let _ = d.xdplb(&["down", "--config", &d.config_path.to_string_lossy()]);
    let running: Vec<usize> = d
        .servers
        .lock()
        .map(|s| s.keys().copied().collect())
        .unwrap_or_default();
    for i in running {
        d.kill_server(i);
    }
    result
}

fn kills(d: &mut Deployment, o: &FailoverOpts, bound: Duration) -> Result<Value> {
    d.start_daemon().context("xdplb run (failover pool)")?;
    let names: Vec<(usize, String)> = d.pools[0]
        .backends
        .iter()
        .map(|b| (b.lab_index, b.name.clone()))
        .collect();
    for (_, n) in &names {
        d.wait_state(n, "state", "active", Duration::from_secs(10))?;
    }
    let mut heals = Vec::new();
    let mut rows = Vec::new();
    for k in 0..o.kills {
        let (idx, name) = &names[k % names.len()];
        d.kill_server(*idx);
        let h = watch(d, name, bound)?;
        println!(
            "  kill {}/{} ({name}): traffic whole after {:.0} ms ({} of {} attempts failed)",
            k + 1,
            o.kills,
            h.healed_ms,
            h.failed,
            h.attempts
        );
        heals.push(h.healed_ms);
        rows.push(json!({"backend": name, "healed_ms": h.healed_ms, "failed": h.failed, "attempts": h.attempts}));
        d.start_server(*idx, name)?;
        d.wait_state(name, "state", "active", Duration::from_secs(10))?;
    }
    let mut sorted = heals.clone();
    sorted.sort_by(f64::total_cmp);
    let p90 = sorted
        .get(((sorted.len() as f64 * 0.9).ceil() as usize).saturating_sub(1))
        .copied()
        .unwrap_or(f64::NAN);
    Ok(json!({
        "kills": o.kills,
        "interval_ms": d.pools[0].interval_ms,
        "timeout_ms": d.pools[0].timeout_ms,
        "fall": d.pools[0].fall,
        "bound_ms": bound.as_secs_f64() * 1e3,
        "healed_ms": heals,
        "min_ms": sorted.first(),
        "median_ms": sys::median(&sorted),
        "p90_ms": p90,
        "max_ms": sorted.last(),
        "runs": rows,
    }))
}
