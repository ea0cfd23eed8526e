//! The fleet demo, `cargo xtask demo fleet`.
//!
//! Builds the fleet lab (`xdplb_tests::fleet`): a router running BIRD with
//! ECMP, three gateways each running `xdplb run` with `[announce]` and a
//! BIRD peering with the router (BGP + BFD), three backends, a client. It
//! narrates: the router's route to the VIP with three next hops; 600
//! keep-alive connections spread over the gateways; gateway 2 killed (the
//! next hop gone within a second, the connections still answering from
//! their backends); gateway 2 back; gateway 3 losing its backends and
//! withdrawing alone — printing `xdplb status` per gateway and the router's
//! route table at each step. Everything it created is removed on exit and
//! on Ctrl-C.

use std::net::{SocketAddrV4, TcpStream};

use std::time::{Duration, Instant};

use anyhow::Result;
use xdplb_tests::fleet::{gateway_transit_addr, vip, Fleet};
use xdplb_tests::narrate::{catch_interrupts, pause, say};
use xdplb_tests::{connect_from, get_on, raise_nofile, Lab};

const HELD: usize = 600;

fn show(f: &Fleet) -> Result<()> {
    println!(
        "$ ip -n rt route show {}   (the router)\n{}",
        vip().ip(),
        f.route_text()?.trim_end()
    );
    for g in 1..=f.gateways {
        println!(
            "$ xdplb status   (gateway g{g})\n{}",
            f.status_text(g).trim_end()
        );
    }
    Ok(())
}

fn flows(f: &Fleet) -> Vec<u64> {
    (1..=f.gateways)
        .map(|g| f.new_flows(g).unwrap_or(0))
        .collect()
}

fn main() {
    catch_interrupts();
    if let Err(e) = demo() {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn check(conns: &mut [(TcpStream, String)]) -> usize {
    conns
        .iter_mut()
        .map(|(s, b)| get_on(s, "/").is_ok_and(|(st, body)| st == 200 && body.trim() == b))
        .filter(|ok| *ok)
        .count()
}

fn demo() -> Result<()> {
    raise_nofile(4096)?;
    say("building the fleet: router (BIRD, ECMP), 3 gateways (xdplb + BIRD, BGP + BFD), 3 backends, a client");
    let f = Fleet::start(3, 3)?;
    println!(
        "gateway g1's xdplb config ({}):\n{}",
        f.config_path(1).display(),
        f.render_config(1)
    );
    println!(
        "what xdplb on g1 wrote for its BIRD ({}):\n{}",
        f.routes_file(1).display(),
        std::fs::read_to_string(f.routes_file(1))?
    );
    println!(
        "$ birdc show protocols   (the router)\n{}",
        f.birdc("rt", "show protocols")?
    );
    show(&f)?;
    pause(Duration::from_secs(2))?;

    say(&format!(
        "{HELD} keep-alive connections from the client: the router hashes them over the gateways"
    ));
    let before = flows(&f);
    let client = Lab::client_addr(0);
    let mut conns = f.lab.run_in("client", move || {
        (0..HELD)
            .map(|i| {
                let src = SocketAddrV4::new(client, 20_000 + i as u16);
                let mut s = connect_from(src, vip(), Duration::from_secs(5))?;
                let (_, body) = get_on(&mut s, "/")?;
                Ok((s, body.trim().to_string()))
            })
            .collect::<Result<Vec<_>>>()
    })??;
    let after = flows(&f);
    let per_gw: Vec<String> = after
        .iter()
        .zip(&before)
        .enumerate()
        .map(|(g, (a, b))| format!("g{}={}", g + 1, a - b))
        .collect();
    println!("new flows per gateway: {}", per_gw.join(" "));
    let mut per_backend = std::collections::BTreeMap::new();
    for (_, b) in &conns {
        *per_backend.entry(b.clone()).or_insert(0) += 1;
    }
    println!("connections per backend: {per_backend:?}");
    pause(Duration::from_secs(2))?;

    say("gateway g2 dies: xdplb and BIRD killed, its link to the router down");
    let t = Instant::now();
    f.kill_gateway(2)?;
    match f.wait_next_hops(
        &[gateway_transit_addr(1), gateway_transit_addr(3)],
        Duration::from_secs(5),
    )? {
        Some(_) => println!(
            "the router dropped g2's next hop {:.0?} after the kill (BFD)",
            t.elapsed()
        ),
        None => println!("the router still has g2's next hop after 5 s"),
    }
    let ok = check(&mut conns);
    println!(
        "{ok} of {HELD} connections still answer from their backend: g1 and g3 have no flow-table \
         entry for g2's flows, but build the same Maglev ring and pick the same backend"
    );
    show(&f)?;
    pause(Duration::from_secs(2))?;

    say("gateway g2 comes back (BIRD, then xdplb adopting its pinned data plane)");
    f.revive_gateway(2)?;
    let all: Vec<_> = (1..=3).map(gateway_transit_addr).collect();
    f.wait_next_hops(&all, Duration::from_secs(20))?;
    let ok = check(&mut conns);
    println!("{ok} of {HELD} connections answer after g2's return");
    show(&f)?;
    pause(Duration::from_secs(2))?;

    say("gateway g3 loses its backends (its backend-side link goes down)");
    let t = Instant::now();
    f.set_backend_link(3, false)?;
    match f.wait_next_hops(
        &[gateway_transit_addr(1), gateway_transit_addr(2)],
        Duration::from_secs(10),
    )? {
        Some(_) => println!(
            "g3's pool emptied (health checks) and g3 withdrew the VIP: gone from the router {:.0?} after the link went down",
            t.elapsed()
        ),
        None => println!("g3 still announced after 10 s"),
    }
    println!(
        "g3's routes file now:\n{}",
        std::fs::read_to_string(f.routes_file(3))?
    );
    show(&f)?;
    let ok = check(&mut conns);
    println!("{ok} of {HELD} connections answer (g1 and g2 carry them)");
    pause(Duration::from_secs(2))?;

    say("g3's backends come back: it announces again");
    f.set_backend_link(3, true)?;
    f.wait_next_hops(&all, Duration::from_secs(10))?;
    show(&f)?;
    say("done: removing the lab");
    Ok(())
}
