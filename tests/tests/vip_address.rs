//! Traffic to a VIP address that matches no pool, on a gateway whose
//! default route points back at the router that sent it: before, the
//! kernel routed a datagram to an unused port of the VIP back upstream,
//! and it crossed the gateway until its TTL ran out (33 times). Now the
//! program answers it as a closed port from the VIP (ICMP port
//! unreachable, a RST), once, and answers an echo request to the VIP.

use std::{
    io::ErrorKind,
    net::{SocketAddr, SocketAddrV4, TcpStream, UdpSocket},
    time::{Duration, Instant},
};

use anyhow::{ensure, Context, Result};
use xdplb_tests::{
    addr::{ROUTER_GW_IF, ROUTER_TRANSIT_ADDR},
    deploy::{Deployment, PoolSpec},
    skip_unless_root, Lab,
};

const WAIT: Duration = Duration::from_secs(2);

/// Packets the router sent the gateway while `f` ran.
fn crossings<T>(d: &Deployment, f: impl FnOnce() -> Result<T>) -> Result<(T, u64)> {
    let read = || -> Result<u64> {
        let path = format!("/sys/class/net/{ROUTER_GW_IF}/statistics/tx_packets");
        let out = d.lab.exec_ok("rt", &["cat", &path])?;
        out.trim().parse().context("tx_packets")
    };
    let before = read()?;
    let r = f()?;
    Ok((r, read()? - before))
}

#[test]
fn a_vip_address_without_a_pool_is_answered_once_never_routed_back() -> Result<()> {
    if skip_unless_root() {
        return Ok(());
    }
    let mut d = Deployment::on(Lab::builder().router_mtu(1500), vec![PoolSpec::new(2, 0)])?;
    // The gateway's default route points at its router, as on a gateway
    // behind an upstream router.
    d.lab.exec_ok(
        "gw",
        &[
            "ip",
            "route",
            "add",
            "default",
            "via",
            &ROUTER_TRANSIT_ADDR.to_string(),
        ],
    )?;
    d.start_daemon()?;
    ensure!(d.spread(2)?.keys().all(|k| k.starts_with("web-")));
    let vip = *d.pools[0].vip.ip();

    // UDP to a port no pool has: ICMP port unreachable from the VIP, so
    // the client's connected socket reports the port closed.
    let unused = SocketAddrV4::new(vip, 9);
    let (udp, crossed) = crossings(&d, || {
        d.lab
            .run_in("client", move || -> Result<Option<ErrorKind>> {
                let s = UdpSocket::bind("0.0.0.0:0")?;
                s.connect(unused)?;
                s.set_read_timeout(Some(WAIT))?;
                s.send(b"anyone?")?;
                let mut buf = [0u8; 64];
                Ok(s.recv(&mut buf).err().map(|e| e.kind()))
            })?
    })?;
    println!("udp to {unused}: {udp:?}, {crossed} packet(s) from the router to the gateway");
    ensure!(
        udp == Some(ErrorKind::ConnectionRefused),
        "the VIP must answer port unreachable: {udp:?}; stats {}",
        d.stats()?
    );
    ensure!(
        crossed <= 2,
        "the datagram crossed the gateway {crossed} times (routed back upstream?)"
    );

    // TCP to a port no pool has: refused at once (a RST from the VIP).
    let tcp_unused = SocketAddr::V4(SocketAddrV4::new(vip, 81));
    let (tcp, crossed) = crossings(&d, || {
        d.lab.run_in("client", move || {
            let t = Instant::now();
            let r = TcpStream::connect_timeout(&tcp_unused, WAIT);
            (t.elapsed(), r.err().map(|e| e.kind()))
        })
    })?;
    println!("tcp to {tcp_unused}: {tcp:?}, {crossed} packet(s) across");
    ensure!(
        tcp.1 == Some(ErrorKind::ConnectionRefused) && tcp.0 < Duration::from_millis(500),
        "{tcp:?}"
    );
    ensure!(crossed <= 2, "the SYN crossed {crossed} times");

    // Ping: the pool serves, so the VIP answers.
    let ping = d.lab.exec(
        "client",
        &["ping", "-c", "1", "-W", "2", "-n", &vip.to_string()],
    )?;
    ensure!(
        ping.status.success(),
        "ping {vip}: {}",
        String::from_utf8_lossy(&ping.stdout)
    );
    let stats = d.stats()?;
    println!("stats: {stats}");
    Ok(())
}
