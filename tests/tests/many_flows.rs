//! The flow table at scale (issue 10): 100,000 concurrent real TCP
//! connections through the VIP, with the product's default flow table
//! (1,048,576 entries) and insert cap, and none is lost.
//!
//! Each connection is established through the VIP and asked once which
//! backend it reached. Once all are up, every one is in the pinned flow
//! table, pinned to that backend; then the ring changes so that it would
//! send every flow to another backend (web-9 takes over, web-1..8 are
//! drained), and a request on every connection must still be answered by
//! the backend it started on. A connection the table had lost would be
//! steered to web-9 and reset.
//!
//! Sockets: a process here may hold at most 20,000 (the hard open-file
//! limit, which tests cannot raise without CAP_SYS_RESOURCE), so the
//! client side is 8 `lab-conns` processes of 12,500 connections each, and
//! the server side 8 serving backends. 4-tuples: four extra client
//! addresses (198.18.0.100–103) × 25,000 source ports, bound explicitly.

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader, Write},
    net::{Ipv4Addr, SocketAddrV4},
    process::{Child, ChildStdin, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context, Result};
use lb_common::{FlowKey, GlobalCounter};
use xdplb_tests::{
    deploy::{DataplaneSpec, Deployment, PoolSpec},
    raise_nofile, skip_unless_root, Lab,
};

mod common;

/// Concurrent connections held.
const FLOWS: usize = 100_000;
/// Extra client addresses the connections come from.
const CLIENT_ADDRS: [Ipv4Addr; 4] = [
    Ipv4Addr::new(198, 18, 0, 100),
    Ipv4Addr::new(198, 18, 0, 101),
    Ipv4Addr::new(198, 18, 0, 102),
    Ipv4Addr::new(198, 18, 0, 103),
];
/// First source port on each address.
const FIRST_PORT: u16 = 20_000;
/// `lab-conns` processes; each holds `FLOWS / HOLDERS` connections, two
/// per client address.
const HOLDERS: usize = 8;
/// Serving backends (web-1..8): about 12,500 connections each.
const SERVING: usize = 8;
/// Open files a holder or a backend needs, with room for the spread of
/// the hash (a backend's share is within a few percent of 12,500).
const NOFILE: u64 = 19_000;
/// The product's default flow table.
const DEFAULT_TABLE: u32 = 1_048_576;
/// How long opening (or checking) every connection may take.
const PHASE_TIMEOUT: Duration = Duration::from_secs(90);

/// A `lab-conns` process in the client namespace; killed on drop (the lab
/// kills whatever is left in its namespaces too).
struct Holder {
    child: Child,
    stdin: ChildStdin,
    lines: mpsc::Receiver<String>,
}

impl Holder {
    fn spawn(lab: &Lab, vip: SocketAddrV4, from: SocketAddrV4, count: usize) -> Result<Holder> {
        let mut child = Command::new("ip")
            .args([
                "netns",
                "exec",
                lab.ns("client"),
                env!("CARGO_BIN_EXE_lab-conns"),
            ])
            .args(["--vip", &vip.to_string(), "--from", &from.to_string()])
            .args(["--count", &count.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("spawn lab-conns")?;
        let stdin = child.stdin.take().context("stdin")?;
        let stdout = child.stdout.take().context("stdout")?;
        let (tx, lines) = mpsc::channel();
        // Ends at the process's end of output.
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(Holder {
            child,
            stdin,
            lines,
        })
    }

    /// Lines up to and including the first starting with `last` (an
    /// `error` line fails), within `deadline`.
    fn until(&self, last: &str, deadline: Instant) -> Result<Vec<String>> {
        let mut got = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self
                .lines
                .recv_timeout(left)
                .with_context(|| format!("lab-conns: no {last:?} line in time"))?;
            if line.starts_with("error") {
                bail!("lab-conns: {line}");
            }
            let done = line.starts_with(last);
            got.push(line);
            if done {
                return Ok(got);
            }
        }
    }

    fn command(&mut self, cmd: &str) -> Result<()> {
        writeln!(self.stdin, "{cmd}").context("to lab-conns")?;
        Ok(self.stdin.flush()?)
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = self.command("exit");
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_hundred_thousand_flows_keep_their_backends() -> Result<()> {
    if skip_unless_root() {
        return Ok(());
    }
    raise_nofile(NOFILE)?;
    let dp = DataplaneSpec {
        flow_table_size: DEFAULT_TABLE,
        max_flow_inserts_per_sec: None,
        ..DataplaneSpec::default()
    };
    let mut d = Deployment::with_dataplane(vec![PoolSpec::new(SERVING + 1, 0)], dp)?;
    d.start_daemon()?;
    let within = Duration::from_secs(5);
    let takeover = format!("web-{}", SERVING + 1);
    d.ctl(&["drain", "web", &takeover])?;
    d.wait_state(&takeover, "state", "draining", within)?;
    for a in CLIENT_ADDRS {
        d.lab.exec_ok(
            "client",
            &["ip", "addr", "add", &format!("{a}/24"), "dev", "cl0"],
        )?;
    }
    let vip = d.pools[0].vip;
    let pin = d.lab.pin_path();
    let before = common::counters(&pin)?;

    // Open every connection; each is asked once who answers.
    let t = Instant::now();
    let per = FLOWS / HOLDERS;
    let per_addr = HOLDERS / CLIENT_ADDRS.len();
    let mut holders = Vec::with_capacity(HOLDERS);
    for k in 0..HOLDERS {
        let from = SocketAddrV4::new(
            CLIENT_ADDRS[k / per_addr],
            FIRST_PORT + ((k % per_addr) * per) as u16,
        );
        holders.push(Holder::spawn(&d.lab, vip, from, per)?);
    }
    let deadline = Instant::now() + PHASE_TIMEOUT;
    let mut conns: Vec<(SocketAddrV4, String)> = Vec::with_capacity(FLOWS);
    // What the controller did meanwhile, for a failure's message: a
    // backend marked down (its flows re-steered) resets connections.
    let transitions = |d: &Deployment| -> String {
        d.daemon_log()
            .lines()
            .filter(|l| l.contains("state changed") || l.contains("WARN"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    for h in &holders {
        let lines = h.until("up ", deadline).with_context(|| {
            format!(
                "controller's transitions and warnings:\n{}",
                transitions(&d)
            )
        })?;
        for line in lines {
            let mut w = line.split(' ');
            if w.next() == Some("conn") {
                let src: SocketAddrV4 = w.next().context("conn line")?.parse()?;
                conns.push((src, w.next().context("conn line")?.to_string()));
            }
        }
    }
    let up = t.elapsed();
    let mut share = BTreeMap::<&str, usize>::new();
    for (_, b) in &conns {
        *share.entry(b.as_str()).or_default() += 1;
    }
    println!(
        "{} connections up in {up:.1?} ({:.0}/s): {share:?}",
        conns.len(),
        conns.len() as f64 / up.as_secs_f64()
    );
    ensure!(
        conns.len() == FLOWS,
        "{} connections held, not {FLOWS}",
        conns.len()
    );
    ensure!(
        !share.contains_key(takeover.as_str()),
        "drained {takeover} got connections: {share:?}"
    );

    // Every one is in the table, pinned to the backend that answered.
    let t = Instant::now();
    let slots = common::slots_by_name(&pin)?;
    let keys: Vec<FlowKey> = conns
        .iter()
        .map(|(s, _)| common::flow_key(*s, vip))
        .collect();
    let pinned = common::pinned_slots(&pin, &keys)?;
    let (mut missing, mut elsewhere) = (0, 0);
    for ((_, b), slot) in conns.iter().zip(&pinned) {
        match slot {
            None => missing += 1,
            Some(s) if slots.get(b) != Some(s) => elsewhere += 1,
            Some(_) => {}
        }
    }
    let after = common::counters(&pin)?;
    let delta = |c: GlobalCounter| after.get(c).saturating_sub(before.get(c));
    println!(
        "flow table checked in {:.1?}: {missing} missing, {elsewhere} pinned elsewhere; flow_insert +{}, flow_insert_capped +{}",
        t.elapsed(),
        delta(GlobalCounter::FlowInserts),
        delta(GlobalCounter::FlowInsertsCapped)
    );
    println!(
        "flow inserts per CPU since load: {:?}",
        common::per_cpu(&pin, GlobalCounter::FlowInserts)?
    );
    ensure!(
        missing == 0 && elsewhere == 0,
        "{missing} of {FLOWS} flows missing from the table, {elsewhere} pinned to another backend"
    );

    // The ring now sends every new flow to the takeover backend; the table
    // must keep every established flow where it was.
    d.ctl(&["undrain", "web", &takeover])?;
    d.wait_state(&takeover, "state", "active", within)?;
    for i in 1..=SERVING {
        let b = format!("web-{i}");
        d.ctl(&["drain", "web", &b])?;
        d.wait_state(&b, "state", "draining", within)?;
    }
    let spread = d.spread(10)?;
    ensure!(
        spread.get(takeover.as_str()) == Some(&10),
        "the ring did not change: {spread:?}"
    );
    let t = Instant::now();
    for h in &mut holders {
        h.command("check")?;
    }
    let deadline = Instant::now() + PHASE_TIMEOUT;
    let (mut ok, mut lost) = (0usize, Vec::new());
    for h in &holders {
        for line in h.until("checked ", deadline)? {
            if line.starts_with("lost ") {
                lost.push(line);
            } else if let Some(rest) = line.strip_prefix("checked ") {
                ok += rest.split(' ').next().unwrap_or("0").parse::<usize>()?;
            }
        }
    }
    println!(
        "after the ring change: {ok} of {FLOWS} connections answered by their own backend ({:.1?}); {} lost",
        t.elapsed(),
        lost.len()
    );
    ensure!(
        lost.is_empty() && ok == FLOWS,
        "{} of {FLOWS} connections lost their backend, e.g. {:?}",
        lost.len(),
        &lost[..lost.len().min(5)]
    );
    Ok(())
}
