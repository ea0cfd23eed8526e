//! The lab itself: namespaces come up, backends are reachable from the
//! client through the gateway's plain kernel forwarding (no xdplb), and
//! nothing is left behind.

use anyhow::{ensure, Context, Result};
use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;
use xdplb_tests::{http_get, skip_unless_root, wait_until, KeepAliveClient, Lab};

const BACKEND_BIN: &str = env!("CARGO_BIN_EXE_lab-backend");
const PORT: u16 = 8080;

fn netns_list() -> Result<String> {
    let out = Command::new("ip").args(["netns", "list"]).output()?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn start_backends(lab: &Lab) -> Result<Vec<xdplb_tests::LabChild>> {
    let mut children = Vec::new();
    for i in 0..lab.backends() {
        let name = format!("web-{}", i + 1);
        let listen = format!("0.0.0.0:{PORT}");
        children.push(lab.spawn(
            lab.backend_ns(i),
            &[
                BACKEND_BIN,
                "--listen",
                &listen,
                "--name",
                &name,
                "--workers",
                "1",
            ],
        )?);
    }
    for (i, child) in children.iter().enumerate() {
        let addr = SocketAddr::from((Lab::backend_addr(i), PORT));
        let up = wait_until(Duration::from_secs(10), Duration::from_millis(50), || {
            lab.run_in("client", || http_get(addr, "/healthz"))
                .ok()
                .and_then(|r| r.ok())
                .is_some_and(|(status, _)| status == 200)
        });
        ensure!(
            up,
            "backend {addr} did not answer /healthz: {}",
            child.log()
        );
    }
    Ok(children)
}

#[test]
fn backends_reachable_through_the_gateway() -> Result<()> {
    if skip_unless_root() {
        return Ok(());
    }
    let prefix;
    {
        let lab = Lab::builder().backends(2).clients(1).build()?;
        prefix = lab.prefix().to_owned();
        let listed = netns_list()?;
        for short in ["client", "gw", "sw", "b1", "b2"] {
            ensure!(
                listed.contains(lab.ns(short)),
                "{} missing: {listed}",
                lab.ns(short)
            );
        }
        let _backends = start_backends(&lab)?;

        for i in 0..2 {
            let addr = SocketAddr::from((Lab::backend_addr(i), PORT));
            let (status, body) = lab.run_in("client", || http_get(addr, "/"))??;
            assert_eq!(status, 200);
            assert_eq!(body, format!("web-{}\n", i + 1));
            let (status, body) = lab.run_in("client", || http_get(addr, "/healthz"))??;
            assert_eq!((status, body.as_str()), (200, "ok\n"));
        }

        // One kept connection answers repeatedly, from one source port.
        let addr = SocketAddr::from((Lab::backend_addr(1), PORT));
        let mut conn = lab.run_in("client", || KeepAliveClient::connect(addr))??;
        let local = conn.local_addr()?;
        assert_eq!(local.ip(), Lab::client_addr(0));
        for _ in 0..5 {
            assert_eq!(conn.get("/")?, (200, "web-2\n".to_owned()));
        }
        assert_eq!(conn.local_addr()?, local);

        // The backends see the client's own address (NAT mode: they route
        // back via the gateway, which forwards without masquerading).
        let out = lab.exec_ok(lab.backend_ns(0), &["ip", "route", "get", "198.18.0.2"])?;
        assert!(out.contains("via 198.18.1.1"), "{out}");
    }
    let listed = netns_list()?;
    assert!(
        !listed.contains(&prefix),
        "namespaces left behind: {listed}"
    );
    Ok(())
}

#[test]
fn several_clients_share_a_bridge() -> Result<()> {
    if skip_unless_root() {
        return Ok(());
    }
    let lab = Lab::builder().backends(1).clients(3).build()?;
    let _backends = start_backends(&lab)?;
    let addr = SocketAddr::from((Lab::backend_addr(0), PORT));
    for i in 0..3 {
        let mut conn = lab.run_in(lab.client_ns(i), || KeepAliveClient::connect(addr))??;
        assert_eq!(conn.local_addr()?.ip(), Lab::client_addr(i));
        assert_eq!(conn.get("/")?, (200, "web-1\n".to_owned()));
    }
    Ok(())
}

#[test]
fn a_router_with_a_small_mtu_link_sits_between_clients_and_gateway() -> Result<()> {
    if skip_unless_root() {
        return Ok(());
    }
    let lab = Lab::builder().backends(1).router_mtu(1280).build()?;
    let _backends = start_backends(&lab)?;
    for (ns, ifname, mtu) in [
        ("client", "cl0", 1280),
        ("rt", "rtc", 1280),
        ("rt", "rtg", 1500),
        ("gw", "gwc", 1500),
    ] {
        let link = lab.exec_ok(ns, &["ip", "-o", "link", "show", ifname])?;
        ensure!(
            link.contains(&format!(" mtu {mtu} ")),
            "{ns}/{ifname}: {link}"
        );
    }
    // GRO on the far end of the gateway's client-side veth (the router's).
    let features = lab.exec_ok("rt", &["ethtool", "-k", "rtg"])?;
    ensure!(
        features.contains("generic-receive-offload: on"),
        "{features}"
    );
    let route = lab.exec_ok("client", &["ip", "route", "get", &Lab::vip(0).to_string()])?;
    ensure!(route.contains("via 198.18.0.1 dev cl0"), "{route}");
    let route = lab.exec_ok("rt", &["ip", "route", "get", &Lab::vip(0).to_string()])?;
    ensure!(route.contains("via 198.18.3.1 dev rtg"), "{route}");
    let route = lab.exec_ok(
        "gw",
        &["ip", "route", "get", &Lab::client_addr(0).to_string()],
    )?;
    ensure!(route.contains("via 198.18.3.2 dev gwc"), "{route}");

    // Plain kernel forwarding does path-MTU discovery: the client
    // advertises MSS 1460, the backend sends full-size DF segments, the
    // router answers with fragmentation-needed and the backend learns 1280.
    let addr = SocketAddr::from((Lab::backend_addr(0), PORT));
    let len = 1 << 20;
    let (status, body) = lab.run_in("client", || {
        xdplb_tests::http::http_get_bytes(
            addr,
            &format!("/bytes/{len}"),
            len,
            Duration::from_secs(10),
        )
    })??;
    ensure!(status == 200);
    ensure!(body == xdplb_tests::http::pattern(len), "body differs");
    let learned = lab.exec_ok(
        "b1",
        &["ip", "route", "get", &Lab::client_addr(0).to_string()],
    )?;
    ensure!(
        learned.contains("mtu 1280"),
        "backend did not learn the path MTU: {learned}"
    );

    // Several clients share the small-MTU segment through br1.
    let lab = Lab::builder()
        .backends(1)
        .clients(2)
        .router_mtu(1400)
        .build()?;
    let _backends = start_backends(&lab)?;
    for i in 0..2 {
        let mut conn = lab.run_in(lab.client_ns(i), || KeepAliveClient::connect(addr))??;
        assert_eq!(conn.get("/")?, (200, "web-1\n".to_owned()));
    }
    let link = lab.exec_ok("sw", &["ip", "-o", "link", "show", "to-rt"])?;
    ensure!(link.contains(" mtu 1400 "), "{link}");
    Ok(())
}

#[test]
fn gateway_is_configured() -> Result<()> {
    if skip_unless_root() {
        return Ok(());
    }
    let lab = Lab::builder().backends(1).build()?;
    let fwd = lab.exec_ok("gw", &["sysctl", "-n", "net.ipv4.conf.all.forwarding"])?;
    assert_eq!(fwd.trim(), "1");
    for (ns, ifname) in [("client", "cl0"), ("sw", "to-gw")] {
        let features = lab.exec_ok(ns, &["ethtool", "-k", ifname])?;
        assert!(
            features.contains("generic-receive-offload: on"),
            "GRO off on {ifname}: {features}"
        );
    }
    // Default offloads: TX checksum offload stays on (tests/README.md).
    for (ns, ifname) in [("client", "cl0"), ("b1", "eth0")] {
        let features = lab.exec_ok(ns, &["ethtool", "-k", ifname])?;
        assert!(
            features.contains("tx-checksumming: on"),
            "TX checksum offload off on {ifname}: {features}"
        );
    }
    assert_eq!(Lab::gw_ifaces(), ["gwc", "gwb"]);
    for ifname in Lab::gw_ifaces() {
        lab.exec_ok("gw", &["ip", "link", "show", ifname])?;
    }
    // VIPs have no address anywhere: the client routes them to the gateway.
    let route = lab.exec_ok("client", &["ip", "route", "get", &Lab::vip(0).to_string()])?;
    assert!(route.contains("via 198.18.0.1 dev cl0"), "{route}");
    // Nothing of ours in the root namespace.
    let root_links = Command::new("ip").args(["-o", "link", "show"]).output()?;
    let root_links = String::from_utf8_lossy(&root_links.stdout);
    for ifname in ["gwc", "gwb", "cl0", "to-gw", "to-b1", "br0"] {
        assert!(
            !root_links.contains(&format!(": {ifname}:"))
                && !root_links.contains(&format!(": {ifname}@")),
            "{ifname} in the root namespace"
        );
    }
    Ok(())
}

#[test]
fn spawned_processes_die_with_the_lab_and_panics_clean_up() -> Result<()> {
    if skip_unless_root() {
        return Ok(());
    }
    let (prefix, pid) = std::thread::spawn(|| -> (String, u32) {
        let lab = Lab::builder().backends(1).build().expect("lab");
        let child = lab.spawn("b1", &["sleep", "600"]).expect("spawn");
        let pid = child.pid();
        std::mem::forget(child); // only the lab is left to kill it
        let prefix = lab.prefix().to_owned();
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
            let _lab = lab;
            panic!("deliberate panic with a live lab");
        }));
        assert!(result.is_err());
        (prefix, pid)
    })
    .join()
    .map_err(|_| anyhow::anyhow!("helper thread panicked"))?;
    let listed = netns_list()?;
    assert!(
        !listed.contains(&prefix),
        "namespaces left behind: {listed}"
    );
    let gone = wait_until(Duration::from_secs(2), Duration::from_millis(20), || {
        !std::path::Path::new(&format!("/proc/{pid}")).exists()
    });
    assert!(gone, "spawned process {pid} survived the lab");
    Ok(())
}

#[test]
fn stale_namespaces_of_dead_runs_are_removed() -> Result<()> {
    if skip_unless_root() {
        return Ok(());
    }
    // No pid is ever this large (pid_max is at most 2^22).
    let stale = "xl99999999-0-gw";
    let live = format!("xl{}-999-gw", std::process::id());
    for ns in [stale, live.as_str()] {
        let st = Command::new("ip").args(["netns", "add", ns]).status()?;
        ensure!(st.success(), "ip netns add {ns}");
    }
    Lab::cleanup_stale();
    let listed = netns_list()?;
    let _ = Command::new("ip").args(["netns", "del", &live]).status();
    assert!(!listed.contains(stale), "stale namespace kept: {listed}");
    assert!(listed.contains(&live), "live namespace removed: {listed}");
    let listed = netns_list().context("ip netns list")?;
    assert!(!listed.contains(&live));
    Ok(())
}

#[test]
fn backend_holds_many_concurrent_connections() -> Result<()> {
    if skip_unless_root() {
        return Ok(());
    }
    /// Connections held open at once.
    const CONNS: usize = 300;
    let lab = Lab::builder().backends(1).build()?;
    let _backends = start_backends(&lab)?;
    let addr = SocketAddr::from((Lab::backend_addr(0), PORT));
    let mut conns = lab.run_in("client", || {
        (0..CONNS)
            .map(|_| KeepAliveClient::connect(addr))
            .collect::<Result<Vec<_>>>()
    })??;
    for round in 0..2 {
        for (i, c) in conns.iter_mut().enumerate() {
            let got = c
                .get("/")
                .with_context(|| format!("round {round}, conn {i}"))?;
            assert_eq!(got, (200, "web-1\n".to_owned()));
        }
    }
    Ok(())
}
