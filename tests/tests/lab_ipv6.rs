//! The dual-stack lab and the UDP backend, with no xdplb: every interface
//! has its IPv6 twin from 2001:2::/48, usable at once (no DAD wait), the
//! gateway forwards IPv6, and the client reaches every backend over both
//! families, TCP (`lab-backend` on `[::]`) and UDP (`lab-udp-backend`),
//! through the gateway's plain kernel forwarding. The UDP client gives up
//! within its bound when nothing answers.

use std::{
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use anyhow::{ensure, Context, Result};
use xdplb_tests::{
    addr::{
        v6_of, BACKEND_IF, CLIENT_IF, GW_BACKEND_ADDR, GW_BACKEND_IF, GW_CLIENT_ADDR, GW_CLIENT_IF,
    },
    http_get, skip_unless_root,
    udp::{UDP_QUERY, UDP_TRY_TIMEOUT},
    wait_until, Lab, LabChild, UdpFlow,
};

const BACKEND_BIN: &str = env!("CARGO_BIN_EXE_lab-backend");
const UDP_BACKEND_BIN: &str = env!("CARGO_BIN_EXE_lab-udp-backend");
const PORT: u16 = 8080;
const UDP_PORT: u16 = 5300;

/// `ip -o addr show dev IF` in `ns`, which must list `want` and not as
/// tentative (DAD pending) or dadfailed.
fn has_usable_addr(lab: &Lab, ns: &str, ifname: &str, want: IpAddr) -> Result<()> {
    let out = lab.exec_ok(ns, &["ip", "-o", "addr", "show", "dev", ifname])?;
    let line = out
        .lines()
        .find(|l| l.contains(&format!(" {want}/")))
        .with_context(|| format!("{ns} {ifname} lacks {want}:\n{out}"))?;
    ensure!(
        !line.contains("tentative") && !line.contains("dadfailed"),
        "{ns} {ifname}: {want} is not usable yet: {line}"
    );
    Ok(())
}

#[test]
fn dual_stack_lab_forwards_tcp_and_udp_over_both_families() -> Result<()> {
    if skip_unless_root() {
        return Ok(());
    }
    let lab = Lab::builder().backends(2).ipv6(true).build()?;
    ensure!(lab.is_ipv6());

    // Addresses: every IPv4 one has its usable twin.
    let gw_v4 = [GW_CLIENT_ADDR, GW_BACKEND_ADDR];
    for (ifname, a) in [GW_CLIENT_IF, GW_BACKEND_IF].iter().zip(gw_v4) {
        has_usable_addr(&lab, "gw", ifname, IpAddr::V4(a))?;
        has_usable_addr(&lab, "gw", ifname, IpAddr::V6(v6_of(a)))?;
    }
    has_usable_addr(&lab, "client", CLIENT_IF, Lab::client_addr6(0).into())?;
    for i in 0..2 {
        let ns = format!("b{}", i + 1);
        has_usable_addr(&lab, &ns, BACKEND_IF, Lab::backend_addr6(i).into())?;
        // Link-local addresses too: DAD is off, not only skipped for ours.
        let out = lab.exec_ok(&ns, &["ip", "-6", "-o", "addr", "show", "dev", BACKEND_IF])?;
        ensure!(
            !out.contains("tentative"),
            "{ns}: an address still waits for DAD:\n{out}"
        );
    }
    let fwd = lab.exec_ok("gw", &["cat", "/proc/sys/net/ipv6/conf/all/forwarding"])?;
    ensure!(
        fwd.trim() == "1",
        "gateway net.ipv6.conf.all.forwarding = {}",
        fwd.trim()
    );
    let ra = lab.exec_ok("client", &["cat", "/proc/sys/net/ipv6/conf/cl0/accept_ra"])?;
    ensure!(ra.trim() == "0", "client accept_ra on cl0 = {}", ra.trim());
    let routes = lab.exec_ok("client", &["ip", "-6", "route", "show", "default"])?;
    ensure!(
        routes.contains(&format!("via {}", v6_of(GW_CLIENT_ADDR))),
        "client's IPv6 default route: {routes}"
    );

    // Servers on [::]: one socket for both families.
    let mut servers: Vec<LabChild> = Vec::new();
    for i in 0..2 {
        let name = format!("web-{}", i + 1);
        servers.push(lab.spawn(
            lab.backend_ns(i),
            &[
                BACKEND_BIN,
                "--listen",
                &format!("[::]:{PORT}"),
                "--name",
                &name,
                "--workers",
                "1",
            ],
        )?);
        servers.push(lab.spawn(
            lab.backend_ns(i),
            &[
                UDP_BACKEND_BIN,
                "--listen",
                &format!("[::]:{UDP_PORT}"),
                "--name",
                &name,
            ],
        )?);
    }
    for i in 0..2 {
        let name = format!("web-{}", i + 1);
        for ip in [
            IpAddr::V4(Lab::backend_addr(i)),
            IpAddr::V6(Lab::backend_addr6(i)),
        ] {
            let tcp = SocketAddr::new(ip, PORT);
            let mut last = String::new();
            let up = wait_until(
                Duration::from_secs(10),
                Duration::from_millis(50),
                || match lab.run_in("client", || http_get(tcp, "/")) {
                    Ok(Ok((200, body))) if body.trim() == name => true,
                    other => {
                        last = format!("{other:?}");
                        false
                    }
                },
            );
            ensure!(
                up,
                "client → {tcp} over TCP: expected 200 {name}, last: {last}"
            );
            let udp = SocketAddr::new(ip, UDP_PORT);
            // UdpFlow accepts only an answer from `udp` itself.
            let who = lab
                .run_in("client", || UdpFlow::open(udp)?.ask())?
                .with_context(|| format!("client → {udp} over UDP"))?;
            ensure!(who == name, "{udp} answered {who:?}, expected {name:?}");
        }
    }
    for s in &servers {
        ensure!(s.is_running(), "a server exited: {}", s.log());
    }
    Ok(())
}

#[test]
fn udp_client_gives_up_within_its_bound() -> Result<()> {
    if skip_unless_root() {
        return Ok(());
    }
    let lab = Lab::builder().backends(1).build()?;
    // Nothing listens there: the backend answers port unreachable, or
    // nothing at all; either way no answer.
    let nobody = SocketAddr::from((Lab::backend_addr(0), UDP_PORT));
    let tries = 2;
    let started = Instant::now();
    let r = lab.run_in("client", || {
        UdpFlow::open(nobody)?.ask_with(UDP_QUERY, UDP_TRY_TIMEOUT, tries)
    })?;
    let took = started.elapsed();
    let err = match r {
        Ok(who) => anyhow::bail!("{nobody} has no server, yet {who:?} answered"),
        Err(e) => format!("{e:#}"),
    };
    ensure!(err.contains("no answer"), "unexpected error: {err}");
    ensure!(
        took <= UDP_TRY_TIMEOUT * tries + Duration::from_secs(1),
        "gave up only after {took:?} ({tries} tries of {UDP_TRY_TIMEOUT:?})"
    );
    // Without the IPv6 option the lab keeps IPv6 off.
    let off = lab.exec_ok("b1", &["cat", "/proc/sys/net/ipv6/conf/all/disable_ipv6"])?;
    ensure!(off.trim() == "1", "IPv6 on in an IPv4 lab: {}", off.trim());
    Ok(())
}

/// With a router between the clients and the gateway (and its small-MTU
/// client link), the IPv6 twins of the router's routes carry traffic both
/// ways too: client → router → gateway → backend and back.
#[test]
fn dual_stack_router_lab_forwards_ipv6() -> Result<()> {
    if skip_unless_root() {
        return Ok(());
    }
    let lab = Lab::builder()
        .backends(1)
        .router_mtu(1400)
        .ipv6(true)
        .build()?;
    let _server = lab.spawn(
        lab.backend_ns(0),
        &[
            UDP_BACKEND_BIN,
            "--listen",
            &format!("[::]:{UDP_PORT}"),
            "--name",
            "b1",
        ],
    )?;
    let addr = SocketAddr::from((Lab::backend_addr6(0), UDP_PORT));
    let mut last = String::new();
    let ok = wait_until(
        Duration::from_secs(10),
        Duration::from_millis(50),
        || match lab.run_in("client", || UdpFlow::open(addr)?.ask()) {
            Ok(Ok(who)) if who == "b1" => true,
            other => {
                last = format!("{other:?}");
                false
            }
        },
    );
    ensure!(ok, "client → {addr} through the router: {last}");
    let fwd = lab.exec_ok("rt", &["cat", "/proc/sys/net/ipv6/conf/all/forwarding"])?;
    ensure!(fwd.trim() == "1", "router IPv6 forwarding = {}", fwd.trim());
    Ok(())
}
