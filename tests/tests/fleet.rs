//! Several gateways behind one ECMP router (`xdplb_tests::fleet`): every
//! gateway runs `xdplb run` with `[announce]` and a BIRD 2 peering with the
//! router's BIRD over BGP with BFD.
//!
//! - `a_lost_gateway_breaks_no_connection`: the router's route to the VIP
//!   has three next hops; 1,000 keep-alive connections spread over the
//!   three gateways; gateway 2 dies (xdplb and BIRD killed, link down);
//!   BFD takes its next hop away within a second; ≥ 99.9% of the
//!   connections keep answering from the same backend; new connections
//!   spread over the survivors; gateway 2 comes back and no connection
//!   breaks.
//! - `a_gateway_whose_pool_empties_withdraws_alone`: gateway 3 loses its
//!   backends; it withdraws the VIP within a second of its pool emptying,
//!   the others keep announcing; it announces again when they return; a
//!   stopped controller withdraws nothing, `xdplb down` withdraws.

use std::net::{Ipv4Addr, SocketAddrV4, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use xdplb_tests::fleet::{gateway_transit_addr, vip, Fleet};
use xdplb_tests::{connect_from, get_on, raise_nofile, skip_unless_root, wait_until, Lab};

const GATEWAYS: usize = 3;
const BACKENDS: usize = 3;
/// Established connections held across the gateway's loss.
const HELD: usize = 1000;
/// Fresh connections opened while a gateway is gone.
const FRESH: usize = 300;
/// Time the router may take to drop a dead gateway's next hop (BFD).
const FAILOVER_BOUND: Duration = Duration::from_secs(1);
const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// A keep-alive connection and the backend that answered it first.
struct Conn {
    stream: TcpStream,
    backend: String,
}

/// Opens `n` connections from the client, source ports `first..`, each
/// answering one `GET /`.
fn open(f: &Fleet, first: u16, n: usize) -> Result<Vec<Conn>> {
    let client = Lab::client_addr(0);
    f.lab.run_in("client", move || {
        (0..n)
            .map(|i| {
                let src = SocketAddrV4::new(client, first + i as u16);
                let mut stream = connect_from(src, vip(), IO_TIMEOUT)?;
                let (status, body) = get_on(&mut stream, "/")?;
                ensure!(status == 200, "{src}: status {status}");
                Ok(Conn {
                    stream,
                    backend: body.trim().to_string(),
                })
            })
            .collect::<Result<Vec<_>>>()
    })?
}

/// Asks every connection again; returns how many answered from the
/// backend they started on.
fn check(conns: &mut [Conn]) -> usize {
    conns
        .iter_mut()
        .map(|c| {
            get_on(&mut c.stream, "/").is_ok_and(|(s, body)| s == 200 && body.trim() == c.backend)
        })
        .filter(|ok| *ok)
        .count()
}

fn new_flows(f: &Fleet) -> Result<Vec<u64>> {
    (1..=GATEWAYS).map(|g| f.new_flows(g)).collect()
}

fn diff(after: &[u64], before: &[u64]) -> Vec<u64> {
    after.iter().zip(before).map(|(a, b)| a - b).collect()
}

fn hops(gs: &[usize]) -> Vec<Ipv4Addr> {
    gs.iter().map(|&g| gateway_transit_addr(g)).collect()
}

#[test]
fn a_lost_gateway_breaks_no_connection() -> Result<()> {
    if skip_unless_root() {
        return Ok(());
    }
    raise_nofile(4 * (HELD + FRESH) as u64)?;
    let f = Fleet::start(GATEWAYS, BACKENDS)?;
    let route = f.route_text()?;
    println!("router's route to the VIP:\n{route}");
    assert_eq!(f.next_hops()?, hops(&[1, 2, 3]), "{route}");
    for g in 1..=GATEWAYS {
        assert_eq!(f.announced(g), Some(true), "g{g} announces");
    }

    let before = new_flows(&f)?;
    let t = Instant::now();
    let mut conns = open(&f, 20_000, HELD)?;
    let spread = diff(&new_flows(&f)?, &before);
    println!(
        "{HELD} connections in {:.1?}, new flows per gateway {spread:?}",
        t.elapsed()
    );
    for (g, n) in spread.iter().enumerate() {
        assert!(
            *n as usize >= HELD / 10,
            "gateway {} took {n} of {HELD} connections: {spread:?}",
            g + 1
        );
    }

    // Gateway 2 dies; every connection is asked again at once, while the
    // router still sends a third of them to the dead gateway (they wait
    // for a TCP retransmission after the next hop is gone).
    let killed = Instant::now();
    f.kill_gateway(2)?;
    let (failover, ok) = std::thread::scope(|s| {
        let asking = s.spawn(|| check(&mut conns));
        let dropped = f
            .wait_next_hops(&hops(&[1, 3]), Duration::from_secs(5))
            .map(|d| d.map(|_| killed.elapsed()));
        (dropped, asking.join().expect("check thread"))
    });
    let failover = failover?.context("the router kept the dead gateway's next hop for 5 s")?;
    println!("router dropped g2's next hop {failover:.0?} after the kill (BFD)");
    println!(
        "across the loss: {ok} of {HELD} connections answered from their backend ({:.2}%), \
         all asked within {:.1?} of the kill",
        100.0 * ok as f64 / HELD as f64,
        killed.elapsed()
    );
    assert!(
        failover <= FAILOVER_BOUND,
        "next hop dropped after {failover:?}"
    );
    assert!(ok * 1000 >= HELD * 999, "only {ok} of {HELD} survived");

    let before = new_flows(&f)?;
    let mut fresh = open(&f, 30_000, FRESH)?;
    let spread = diff(&new_flows(&f)?, &before);
    println!("{FRESH} new connections with g2 gone: new flows per gateway {spread:?}");
    assert_eq!(spread[1], 0, "{spread:?}");
    assert!(
        spread[0] as usize >= FRESH / 5 && spread[2] as usize >= FRESH / 5,
        "{spread:?}"
    );

    // Gateway 2 comes back: nothing established breaks.
    f.revive_gateway(2)?;
    let back = f
        .wait_next_hops(&hops(&[1, 2, 3]), Duration::from_secs(20))?
        .context("g2's next hop did not return")?;
    println!("g2 back in the router's route {back:.1?} after its xdplb answered");
    let ok = check(&mut conns);
    let ok_fresh = check(&mut fresh);
    println!("after the return: {ok} of {HELD} and {ok_fresh} of {FRESH} connections answer");
    assert_eq!(ok, HELD, "held connections broke when g2 returned");
    assert_eq!(ok_fresh, FRESH, "fresh connections broke when g2 returned");
    let before = new_flows(&f)?;
    let _more = open(&f, 40_000, FRESH)?;
    let spread = diff(&new_flows(&f)?, &before);
    println!("{FRESH} new connections with g2 back: {spread:?}");
    assert!(spread.iter().all(|n| *n > 0), "{spread:?}");
    Ok(())
}

#[test]
fn a_gateway_whose_pool_empties_withdraws_alone() -> Result<()> {
    if skip_unless_root() {
        return Ok(());
    }
    let f = Fleet::start(GATEWAYS, BACKENDS)?;
    assert_eq!(f.next_hops()?, hops(&[1, 2, 3]));

    // Gateway 3 can no longer reach its backends.
    let cut = Instant::now();
    f.set_backend_link(3, false)?;
    let mut emptied = None;
    let mut withdrawn = None;
    wait_until(Duration::from_secs(10), Duration::from_millis(10), || {
        if emptied.is_none()
            && f.status(3)
                .is_ok_and(|s| s["pools"][0]["empty"].as_bool() == Some(true))
        {
            emptied = Some(Instant::now());
        }
        if withdrawn.is_none() && f.next_hops().is_ok_and(|h| h == hops(&[1, 2])) {
            withdrawn = Some(Instant::now());
        }
        emptied.is_some() && withdrawn.is_some()
    });
    let (emptied, withdrawn) = (
        emptied.context("g3's pool never showed empty")?,
        withdrawn.context("g3's next hop was never withdrawn")?,
    );
    let took = withdrawn.saturating_duration_since(emptied);
    println!(
        "g3 withdrew {took:.0?} after its status showed the pool empty ({:.0?} after its \
         backend link went down; health detection ≤ 550 ms of that)",
        withdrawn - cut
    );
    assert!(took <= Duration::from_secs(1), "withdrawn after {took:?}");
    assert_eq!(f.announced(3), Some(false));
    assert_eq!(f.announced(1), Some(true));
    assert_eq!(f.announced(2), Some(true));
    let routes = std::fs::read_to_string(f.routes_file(3))?;
    assert!(!routes.contains("198.18.2.10"), "{routes}");
    // Clients still reach the VIP through the others.
    let conns = open(&f, 20_000, 50)?;
    assert_eq!(conns.len(), 50);

    // Backends back: g3 announces again.
    f.set_backend_link(3, true)?;
    f.wait_next_hops(&hops(&[1, 2, 3]), Duration::from_secs(10))?
        .context("g3 did not announce again")?;

    // A stopped controller withdraws nothing; `xdplb down` does.
    let out = f.xdplb(
        3,
        &[
            "down",
            "--config",
            f.config_path(3).to_str().context("path")?,
        ],
    )?;
    ensure!(
        !out.status.success(),
        "down refuses while the controller runs"
    );
    // A restart (stop, 1.5 s down, start until announced again) while
    // the router is watched every 20 ms: its route keeps all three hops.
    let watching = std::sync::atomic::AtomicBool::new(true);
    let lost: Vec<String> = std::thread::scope(|s| -> Result<Vec<String>> {
        let watcher = s.spawn(|| {
            let mut lost = Vec::new();
            let deadline = Instant::now() + Duration::from_secs(60);
            while watching.load(std::sync::atomic::Ordering::Relaxed) && Instant::now() < deadline {
                match f.next_hops() {
                    Ok(h) if h == hops(&[1, 2, 3]) => {}
                    other => lost.push(format!("{other:?}")),
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            lost
        });
        let restarted = (|| -> Result<()> {
            f.stop_daemon(3)?;
            std::thread::sleep(Duration::from_millis(1500));
            f.start_daemon(3)?;
            ensure!(
                wait_until(Duration::from_secs(5), Duration::from_millis(50), || {
                    f.announced(3) == Some(true)
                }),
                "g3 does not say it announces after its restart"
            );
            Ok(())
        })();
        watching.store(false, std::sync::atomic::Ordering::Relaxed);
        let lost = watcher.join().expect("watcher");
        restarted?;
        Ok(lost)
    })?;
    assert!(
        lost.is_empty(),
        "the route changed during a restart: {lost:?}"
    );
    f.stop_daemon(3)?;
    let down_at = Instant::now();
    let out = f.xdplb(
        3,
        &[
            "down",
            "--config",
            f.config_path(3).to_str().context("path")?,
        ],
    )?;
    ensure!(
        out.status.success(),
        "down: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{}", String::from_utf8_lossy(&out.stdout).trim());
    f.wait_next_hops(&hops(&[1, 2]), Duration::from_secs(5))?
        .context("xdplb down did not withdraw")?;
    println!("xdplb down withdrew g3 in {:.0?}", down_at.elapsed());
    Ok(())
}

/// The operator's examples in `deploy/bird/` are configs BIRD accepts
/// (`bird -p` parses and exits; the gateway's include points at a routes
/// file in the shape xdplb writes).
#[test]
fn the_packaged_bird_configs_parse() -> Result<()> {
    if skip_unless_root() {
        return Ok(());
    }
    let dir = std::env::temp_dir().join(format!("xdplb-bird-conf-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let deploy = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/bird");
    let routes = dir.join("vips.conf");
    std::fs::write(&routes, xdplb_tests::fleet::EMPTY_ROUTES)?;
    let gateway = std::fs::read_to_string(deploy.join("gateway.conf"))?
        .replace("/run/xdplb/vips.conf", routes.to_str().context("path")?);
    assert!(gateway.contains(&format!("include \"{}\";", routes.display())));
    std::fs::write(dir.join("gateway.conf"), gateway)?;
    let result = (|| {
        for conf in [dir.join("gateway.conf"), deploy.join("router.conf")] {
            let out = std::process::Command::new("bird")
                .args(["-p", "-c"])
                .arg(&conf)
                .output()
                .context("run bird -p")?;
            ensure!(
                out.status.success(),
                "{}: {}",
                conf.display(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    })();
    std::fs::remove_dir_all(&dir)?;
    result
}
