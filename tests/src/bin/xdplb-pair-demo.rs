//! The pair demo, `cargo xtask demo pair`.
//!
//! Builds the pair lab (`xdplb_tests::pair`): two gateways `gwa` and `gwb`,
//! each running `xdplb run` with the same config and a keepalived (VRRPv3,
//! 0.1 s adverts, a sync group moving the clients' and the backends' VRRP
//! addresses together, `xdplb serving` as the track script), four backends
//! (three in the pool at first), a client. It narrates: who is master and
//! what `xdplb serving` says; 300 keep-alive connections through the
//! master; a fourth backend added by reload on both gateways (a ring
//! change), and what flow sync (`[sync]` on both) told the standby; the
//! master cut off as a dead host — the takeover time, who is master now,
//! how many connections are alive; new connections on the new master.
//! Everything it created is removed on exit and on Ctrl-C.

use std::net::{SocketAddrV4, TcpStream};

use std::time::{Duration, Instant};

use anyhow::Result;
use xdplb_tests::narrate::{catch_interrupts, pause, say};
use xdplb_tests::pair::{vip, Pair, GATEWAYS};
use xdplb_tests::{connect_from, get_on, raise_nofile, Lab};

const HELD: usize = 300;

/// Who holds the VRRP addresses, and each gateway's `xdplb serving`.
fn who(p: &Pair) -> Result<()> {
    match p.master() {
        Some(gw) => println!("master: {gw} (holds 198.18.0.1 and 198.18.1.1)"),
        None => println!("no single master: {:?}", p.holders()),
    }
    for gw in GATEWAYS {
        match p.serving(gw) {
            Ok((code, line)) => println!("$ xdplb serving   ({gw})  → exit {code}: {line}"),
            Err(e) => println!("$ xdplb serving   ({gw})  → {e:#}"),
        }
    }
    Ok(())
}

fn per_backend(conns: &[(TcpStream, String)]) -> String {
    let mut n = std::collections::BTreeMap::new();
    for (_, b) in conns {
        *n.entry(b.as_str()).or_insert(0) += 1;
    }
    format!("{n:?}")
}

fn check(conns: &mut [(TcpStream, String)]) -> usize {
    conns
        .iter_mut()
        .map(|(s, b)| get_on(s, "/").is_ok_and(|(st, body)| st == 200 && body.trim() == b))
        .filter(|ok| *ok)
        .count()
}

fn main() {
    catch_interrupts();
    if let Err(e) = demo() {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn demo() -> Result<()> {
    raise_nofile(4096)?;
    say("building the pair: gateways gwa and gwb (xdplb + keepalived each), 4 backends (3 in the pool), a client");
    let p = Pair::start(1, 4, 3)?;
    println!(
        "gwa's keepalived.conf ({}):\n{}",
        p.keepalived_conf_path("gwa").display(),
        std::fs::read_to_string(p.keepalived_conf_path("gwa"))?
    );
    println!(
        "both gateways' xdplb config ({}):\n{}",
        p.config_path("gwa").display(),
        p.render_config("gwa")
    );
    who(&p)?;
    pause(Duration::from_secs(2))?;

    say(&format!(
        "{HELD} keep-alive connections from the client, through the master"
    ));
    let before: Vec<u64> = GATEWAYS
        .iter()
        .map(|g| p.new_flows(g).unwrap_or(0))
        .collect();
    let client = Lab::client_addr(0);
    let mut conns = p.lab.run_in("client", move || {
        (0..HELD)
            .map(|i| {
                let src = SocketAddrV4::new(client, 20_000 + i as u16);
                let mut s = connect_from(src, vip(), Duration::from_secs(5))?;
                let (_, body) = get_on(&mut s, "/")?;
                Ok((s, body.trim().to_string()))
            })
            .collect::<Result<Vec<_>>>()
    })??;
    for (gw, b) in GATEWAYS.iter().zip(&before) {
        println!(
            "new flows on {gw}: {}",
            p.new_flows(gw).unwrap_or(0).saturating_sub(*b)
        );
    }
    println!("connections per backend: {}", per_backend(&conns));
    pause(Duration::from_secs(2))?;

    say("a ring change: web-4 joins the pool, by reload on both gateways");
    p.set_pool_size(4)?;
    let ok = check(&mut conns);
    println!(
        "{ok} of {HELD} connections still answer from their backend: the master's flow table \
         keeps them pinned, though its new ring would send about a quarter of them to web-4"
    );
    let counts = |gw: &str, what: &str| {
        p.status(gw)
            .ok()
            .and_then(|s| s["sync_counters"][what].as_u64())
            .unwrap_or(0)
    };
    println!(
        "flow sync: gwa has sent {} entries (the pins its new ring would move), gwb recorded {}",
        counts("gwa", "entries_sent"),
        counts("gwb", "entries_inserted")
    );
    println!(
        "$ xdplb status   (gwa)\n{}",
        p.status_text("gwa").trim_end()
    );
    pause(Duration::from_secs(2))?;

    say("the master gwa is cut off as a dead host: links down, keepalived killed");
    let cut = Instant::now();
    p.cut_off("gwa")?;
    let (takeover, vrrp) = std::thread::scope(|s| {
        let vrrp = s.spawn(|| {
            p.wait_master("gwb", Duration::from_secs(5))
                .map(|_| cut.elapsed())
        });
        let takeover = p.first_new_connection(40_000, cut);
        (takeover, vrrp.join().ok().flatten())
    });
    match takeover? {
        Some(t) => println!("a new connection works again {t:.2?} after the cut"),
        None => println!("no new connection within 10 s of the cut"),
    }
    match vrrp {
        Some(t) => println!("gwb holds both VRRP addresses {t:.2?} after the cut"),
        None => println!("gwb did not become the only master within 5 s"),
    }
    who(&p)?;
    let ok = check(&mut conns);
    println!(
        "{ok} of {HELD} connections answer from their backend ({} broke): those opened before \
         the ring change stay on their backends because gwb holds the pins flow sync sent it; \
         the others need nothing (stateless replies, identical rings)",
        HELD - ok
    );
    println!(
        "$ xdplb status   (gwb)\n{}",
        p.status_text("gwb").trim_end()
    );
    pause(Duration::from_secs(2))?;

    say("new connections through the new master");
    let fresh = p.lab.run_in("client", move || {
        (0..50)
            .filter(|i| {
                let src = SocketAddrV4::new(client, 30_000 + i);
                connect_from(src, vip(), Duration::from_secs(2))
                    .and_then(|mut s| get_on(&mut s, "/"))
                    .is_ok_and(|(st, _)| st == 200)
            })
            .count()
    })?;
    println!("{fresh} of 50 new connections answered");
    say("done: removing the lab");
    Ok(())
}
