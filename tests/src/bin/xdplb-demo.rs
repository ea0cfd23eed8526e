//! The hot-warm demo a newcomer runs with `cargo xtask demo`.
//!
//! Builds a lab (client, gateway, 3 primaries and 1 warm spare, a load
//! agent on every backend), runs `xdplb run` on the gateway, keeps steady
//! traffic flowing from the client, and narrates: the spread, an operator
//! drain, a primary killed (with the measured failover time), the spare
//! taking over, the primary back and the spare stepping back, then elastic
//! scaling (the agents report load above `high_watermark`: the spare is
//! activated after the hold and ramps in by slow start; the load falls and
//! it drains back) — printing `xdplb status` and `xdplb stats` at each step. Everything it created is
//! removed on exit and on Ctrl-C.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, Result};
use xdplb_tests::narrate::{catch_interrupts, pause, say};
use xdplb_tests::{
    deploy::{Deployment, LoadSpec, PoolSpec},
    http_get,
};

/// Per-backend answers and failures since the last step.
#[derive(Default)]
struct Tally {
    by_backend: BTreeMap<String, u64>,
    failures: u64,
    last_failure: Option<Instant>,
}

fn show(d: &Deployment, tally: &Mutex<Tally>) -> Result<()> {
    let t = std::mem::take(&mut *tally.lock().unwrap());
    let spread: Vec<String> = t
        .by_backend
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    println!(
        "traffic since last step: {}  failures={}",
        spread.join(" "),
        t.failures
    );
    println!("$ xdplb status\n{}", d.ctl(&["status"])?);
    let pin = d.lab.pin_path();
    let out = d.xdplb(&["stats", "--pin-path", &pin.to_string_lossy()])?;
    println!("$ xdplb stats\n{}", String::from_utf8_lossy(&out.stdout));
    Ok(())
}

fn main() {
    catch_interrupts();
    if let Err(e) = demo() {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn demo() -> Result<()> {
    let mut pool = PoolSpec::new(3, 1);
    pool.min_active = 3;
    pool.interval_ms = 200;
    pool.timeout_ms = 100;
    pool.fall = 2;
    pool.load = Some(LoadSpec {
        interval_ms: 500,
        high: 0.8,
        low: 0.3,
        scale_up_after_ms: 3000,
        scale_down_after_ms: 5000,
        slow_start_ms: 3000,
    });
    let bound = pool.detection_bound();
    say("building the lab: client, gateway, switch, 3 primaries + 1 warm spare (each with a load agent)");
    let mut d = Deployment::new(vec![pool])?;
    println!(
        "config ({}):\n{}",
        d.config_path.display(),
        std::fs::read_to_string(&d.config_path)?
    );
    say("starting `xdplb run` on the gateway (XDP on gwc and gwb)");
    d.start_daemon()?;

    let vip = SocketAddr::V4(d.pools[0].vip);
    let tally = Arc::new(Mutex::new(Tally::default()));
    let stop = Arc::new(AtomicBool::new(false));
    std::thread::scope(|scope| -> Result<()> {
        let traffic = {
            let (tally, stop, lab) = (tally.clone(), stop.clone(), &d.lab);
            scope.spawn(move || {
                lab.run_in("client", || {
                    // Steady traffic: ~50 new connections a second, bounded
                    // by the stop flag and an hour at most.
                    let deadline = Instant::now() + Duration::from_secs(3600);
                    while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
                        let r = http_get(vip, "/");
                        let mut t = tally.lock().unwrap();
                        match r {
                            Ok((200, body)) => {
                                *t.by_backend.entry(body.trim().to_string()).or_default() += 1
                            }
                            _ => {
                                t.failures += 1;
                                t.last_failure = Some(Instant::now());
                            }
                        }
                        drop(t);
                        std::thread::sleep(Duration::from_millis(20));
                    }
                })
            })
        };
        let result = (|| -> Result<()> {
            pause(Duration::from_secs(3))?;
            say("1. steady traffic spreads over the three primaries; the spare stands by");
            show(&d, &tally)?;

            say("2. operator drain of web-2: its established flows finish, new ones avoid it");
            println!(
                "$ xdplb drain web web-2\n{}",
                d.ctl(&["drain", "web", "web-2"])?
            );
            pause(Duration::from_secs(3))?;
            show(&d, &tally)?;
            println!(
                "$ xdplb undrain web web-2\n{}",
                d.ctl(&["undrain", "web", "web-2"])?
            );
            pause(Duration::from_secs(2))?;

            say("3. web-1's server is killed: health checks notice, the warm spare fills the gap");
            let web1 = d.pools[0].backend("web-1").lab_index;
            let killed = Instant::now();
            d.kill_server(web1);
            let down_after =
                d.wait_state("web-1", "state", "down", bound + Duration::from_secs(3))?;
            let spare_after = d.wait_state("spare-1", "state", "active", Duration::from_secs(5))?;
            pause(Duration::from_secs(3))?;
            let last_failure = tally.lock().unwrap().last_failure;
            let healed = last_failure
                .filter(|t| *t > killed)
                .map(|t| t - killed)
                .unwrap_or_default();
            println!(
                "measured: web-1 marked down {:.0} ms after the kill; spare active {:.0} ms later; \
                 last failed connection {:.0} ms after the kill (bound: interval×fall+timeout = {} ms)",
                down_after.as_secs_f64() * 1000.0,
                spare_after.as_secs_f64() * 1000.0,
                healed.as_secs_f64() * 1000.0,
                bound.as_millis()
            );
            show(&d, &tally)?;

            say("4. web-1 comes back: it rises after `rise` good checks; the spare drains back to standby");
            d.start_server(web1, "web-1")?;
            d.wait_state("web-1", "state", "active", Duration::from_secs(5))?;
            d.wait_state("spare-1", "state", "standby", Duration::from_secs(15))?;
            pause(Duration::from_secs(2))?;
            show(&d, &tally)?;

            let load = d.pools[0].load.clone().expect("the demo pool polls agents");
            say(&format!(
                "5. elastic scaling: every agent now reports load 0.90, above high_watermark {:.2}; \
                 after {} ms above it the spare is activated and ramps in over slow_start_ms = {} ms",
                load.high, load.scale_up_after_ms, load.slow_start_ms
            ));
            let primaries: Vec<usize> = d.pools[0]
                .backends
                .iter()
                .filter(|b| !b.spare)
                .map(|b| b.lab_index)
                .collect();
            for &i in &primaries {
                d.set_load(i, 0.9)?;
            }
            let rose = Instant::now();
            pause(Duration::from_secs(1))?;
            println!("(load reported; the hold has started)");
            show(&d, &tally)?;
            d.wait_state(
                "spare-1",
                "state",
                "active",
                Duration::from_millis(load.scale_up_after_ms + 5000),
            )?;
            println!(
                "measured: spare-1 active {:.1} s after the load rose (hold: {:.1} s); its weight ramps:",
                rose.elapsed().as_secs_f64(),
                load.scale_up_after_ms as f64 / 1000.0
            );
            show(&d, &tally)?;
            pause(Duration::from_millis(load.slow_start_ms / 2))?;
            println!("(half-way through slow start)");
            show(&d, &tally)?;
            pause(Duration::from_millis(load.slow_start_ms / 2 + 500))?;
            println!("(slow start over: full weight, less the load)");
            show(&d, &tally)?;

            say(&format!(
                "6. the load falls to 0.10, below low_watermark {:.2}: after {} ms the spare drains back to standby",
                load.low, load.scale_down_after_ms
            ));
            for b in &d.pools[0].backends {
                d.set_load(b.lab_index, 0.1)?;
            }
            let fell = Instant::now();
            let left = xdplb_tests::wait_until(
                Duration::from_millis(load.scale_down_after_ms + 5000),
                Duration::from_millis(20),
                || {
                    d.backend_status("web", "spare-1")
                        .is_ok_and(|b| b["state"] != "active")
                },
            );
            if !left {
                bail!("spare-1 stayed active after the load fell: {}", d.status()?);
            }
            println!(
                "measured: spare-1 left the active set {:.1} s after the load fell (hold: {:.1} s)",
                fell.elapsed().as_secs_f64(),
                load.scale_down_after_ms as f64 / 1000.0
            );
            show(&d, &tally)?;
            d.wait_state("spare-1", "state", "standby", Duration::from_secs(15))?;
            pause(Duration::from_secs(1))?;
            show(&d, &tally)?;
            say("done: the lab is removed on exit");
            Ok(())
        })();
        stop.store(true, Ordering::SeqCst);
        let _ = traffic.join();
        result
    })
}
