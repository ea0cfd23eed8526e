//! Concurrent inserts never cross two flows (issue 22, item 4).
//!
//! A flow-table insert is three stores (backend, seen, tag). Two CPUs
//! inserting into one way at once used to be able to interleave them and
//! leave one flow's tag with the other's backend; the next packet of the
//! first flow then went to the second's backend. Here both CPUs insert
//! into one bucket pair all the time: a 16-entry table (two buckets), no
//! insert cap, hundreds of UDP flows, the gateway's client-side veth with
//! four RX queues and senders on every CPU (so the program runs on all of
//! them at once). Every flow sends bursts of datagrams; each backend
//! answers with its name. While the ring does not change, a flow the
//! table forgot is balanced by the ring to the backend it had, so a flow
//! answered by two backends is a crossed entry, nothing else.
//!
//! `XDPLB_PUBLISH_SECS` sets how long the traffic runs (default 120).

use std::{
    collections::{BTreeMap, BTreeSet},
    io::ErrorKind,
    net::{Ipv4Addr, SocketAddr, UdpSocket},
    time::{Duration, Instant},
};

use anyhow::{ensure, Context, Result};
use lb_common::GlobalCounter;
use xdplb_tests::{
    deploy::{DataplaneSpec, Deployment, PoolSpec},
    skip_unless_root, Lab,
};

// Shared with flood.rs and many_flows.rs; this test reads per-CPU counters only.
#[allow(dead_code)]
mod common;

/// Flow-table entries: two buckets of eight ways, which every flow shares.
const TABLE: u32 = 16;
/// Sending threads: two per CPU of the machines this runs on.
const SENDERS: usize = 4;
/// UDP flows per sender (fixed source ports: one 5-tuple each).
const FLOWS_PER_SENDER: usize = 64;
/// Datagrams a flow sends back to back before reading its answers: the
/// second and later arrive while the first one's entry is fresh, so a
/// crossed entry is read before the churn evicts it.
const BURST: usize = 4;
/// Backends: a crossed entry names another flow's backend, which differs
/// from the flow's own with probability 1 − 1/BACKENDS.
const BACKENDS: usize = 4;
/// How long a flow waits for each answer before it counts it lost.
const ANSWER_TIMEOUT: Duration = Duration::from_millis(200);
/// Default traffic time (`XDPLB_PUBLISH_SECS`).
const DEFAULT_SECS: u64 = 120;

/// What one sender saw: per flow (source port), the names that answered,
/// and the datagrams sent and answered.
#[derive(Default)]
struct Seen {
    names: BTreeMap<u16, BTreeSet<String>>,
    sent: u64,
    answered: u64,
}

/// Sends bursts on every one of `flows` until `until`, recording who
/// answered each.
fn send(flows: Vec<UdpSocket>, until: Instant) -> Result<Seen> {
    let mut seen = Seen::default();
    let mut buf = [0u8; 256];
    let ports: Vec<u16> = flows
        .iter()
        .map(|s| Ok(s.local_addr()?.port()))
        .collect::<Result<_>>()?;
    while Instant::now() < until {
        for (sock, &port) in flows.iter().zip(&ports) {
            for _ in 0..BURST {
                match sock.send(b"who\n") {
                    Ok(_) => seen.sent += 1,
                    // An ICMP error queued on the socket: the next round
                    // tries again.
                    Err(e) if e.kind() == ErrorKind::ConnectionRefused => {}
                    Err(e) => return Err(e).context("send"),
                }
            }
            for _ in 0..BURST {
                match sock.recv(&mut buf) {
                    Ok(n) => {
                        seen.answered += 1;
                        let name = String::from_utf8_lossy(&buf[..n]).trim().to_string();
                        seen.names.entry(port).or_default().insert(name);
                    }
                    Err(e)
                        if matches!(
                            e.kind(),
                            ErrorKind::WouldBlock
                                | ErrorKind::TimedOut
                                | ErrorKind::ConnectionRefused
                        ) =>
                    {
                        break
                    }
                    Err(e) => return Err(e).context("recv"),
                }
            }
        }
    }
    Ok(seen)
}

#[test]
fn concurrent_inserts_never_answer_a_flow_from_two_backends() -> Result<()> {
    if skip_unless_root() {
        return Ok(());
    }
    let secs = match std::env::var("XDPLB_PUBLISH_SECS") {
        Ok(s) => s
            .parse::<u64>()
            .with_context(|| format!("XDPLB_PUBLISH_SECS={s:?}: not a number of seconds"))?,
        Err(_) => DEFAULT_SECS,
    };
    let dp = DataplaneSpec {
        flow_table_size: TABLE,
        max_flow_inserts_per_sec: Some(0),
        ..DataplaneSpec::default()
    };
    let mut d = Deployment::configured(
        Lab::builder().client_queues(SENDERS as u32),
        vec![PoolSpec::udp(BACKENDS)],
        dp,
    )?;
    d.start_daemon()?;
    let vip: SocketAddr = d.pools[0].vip.into();
    let pin = d.lab.pin_path();
    let names: BTreeSet<String> = d.pools[0].backends.iter().map(|b| b.name.clone()).collect();

    // Sockets belong to the namespace of the thread that opens them.
    let flows: Vec<Vec<UdpSocket>> = d.lab.run_in("c1", || -> Result<_> {
        (0..SENDERS)
            .map(|_| {
                (0..FLOWS_PER_SENDER)
                    .map(|_| {
                        let s = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))?;
                        s.connect(vip)?;
                        s.set_read_timeout(Some(ANSWER_TIMEOUT))?;
                        Ok(s)
                    })
                    .collect::<Result<Vec<_>>>()
            })
            .collect()
    })??;
    let inserts_before = common::per_cpu(&pin, GlobalCounter::FlowInserts)?;
    let until = Instant::now() + Duration::from_secs(secs);
    let seen: Vec<Seen> = std::thread::scope(|s| {
        let senders: Vec<_> = flows
            .into_iter()
            .map(|f| s.spawn(move || send(f, until)))
            .collect();
        senders
            .into_iter()
            .map(|h| h.join().expect("sender panicked"))
            .collect::<Result<Vec<_>>>()
    })?;
    let inserts: Vec<u64> = common::per_cpu(&pin, GlobalCounter::FlowInserts)?
        .iter()
        .zip(&inserts_before)
        .map(|(a, b)| a - b)
        .collect();
    let raced: u64 = common::per_cpu(&pin, GlobalCounter::FlowRaced)?
        .iter()
        .sum();

    let (sent, answered) = seen
        .iter()
        .fold((0, 0), |(s, a), x| (s + x.sent, a + x.answered));
    let flows: BTreeMap<u16, &BTreeSet<String>> = seen
        .iter()
        .flat_map(|x| x.names.iter().map(|(p, n)| (*p, n)))
        .collect();
    let crossed: Vec<String> = flows
        .iter()
        .filter(|(_, n)| n.len() > 1)
        .map(|(p, n)| format!("port {p}: {n:?}"))
        .collect();
    let summary = format!(
        "{secs} s: {sent} datagrams sent, {answered} answered, {} of {} flows answered; \
         flow_insert per CPU {inserts:?}, flow_raced {}",
        flows.len(),
        SENDERS * FLOWS_PER_SENDER,
        raced,
    );
    eprintln!("{summary}");
    ensure!(
        crossed.is_empty(),
        "{} flows were answered by two or more backends ({summary}); first ones: {:#?}",
        crossed.len(),
        &crossed[..crossed.len().min(10)]
    );
    // The test proves something only if the CPUs inserted concurrently,
    // many times, and the answers came from the pool.
    ensure!(
        inserts.iter().filter(|&&n| n >= 1000).count() >= 2.min(inserts.len()),
        "fewer than two CPUs inserted 1,000 flows each: {summary}"
    );
    ensure!(
        answered * 10 >= sent * 9,
        "under 90% of datagrams were answered: {summary}"
    );
    ensure!(
        flows.len() == SENDERS * FLOWS_PER_SENDER,
        "some flows were never answered: {summary}"
    );
    for n in flows.values().flat_map(|n| n.iter()) {
        ensure!(
            names.contains(n),
            "answered by {n:?}, no backend of the pool"
        );
    }
    Ok(())
}
